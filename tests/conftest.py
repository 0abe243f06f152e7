"""Test setup: 8 simulated CPU devices (set before JAX initializes), a compilation cache shared by
the session's workers, shared fixtures."""

import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax
import pytest

from kfac_mem.sharding import make_mesh

# Many tests compile the same programs (the same tiny model's step from different closures, 1- and
# 8-device runs of one computation). JAX's persistent compilation cache, keyed on the compiled
# program and the jax/XLA versions, makes every repeat a cache read. The directory is new for each
# session (created by the controlling process, inherited by pytest-xdist's workers through the
# environment, removed at the end), so a run never reads entries from an earlier checkout.
_CACHE_ENV = "KFAC_MEM_TEST_COMPILATION_CACHE"


def pytest_configure(config):
    if not hasattr(config, "workerinput") and _CACHE_ENV not in os.environ:
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="kfac-mem-test-jax-cache-")
        config._kfac_mem_cache_owner = True
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    # A size limit (far above what a session writes) turns on JAX's file lock around every cache
    # read and write, so one worker never reads an entry another worker is still writing.
    jax.config.update("jax_compilation_cache_max_size", 8 << 30)


def pytest_unconfigure(config):
    if getattr(config, "_kfac_mem_cache_owner", False):
        shutil.rmtree(os.environ.pop(_CACHE_ENV), ignore_errors=True)


@pytest.fixture(scope="session")
def mesh8():
    """(mesh, rules): FSDP over all 8 simulated devices."""
    assert len(jax.devices()) == 8, "tests expect 8 simulated CPU devices (XLA_FLAGS)"
    return make_mesh("fsdp")


@pytest.fixture(scope="session")
def mesh1():
    """(mesh, rules): the same config on a single device."""
    return make_mesh("fsdp", devices=jax.devices()[:1])
