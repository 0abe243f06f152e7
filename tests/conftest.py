"""Test setup: 8 simulated CPU devices (set before JAX initializes), shared fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax
import pytest

from kfac_mem.sharding import make_mesh


@pytest.fixture(scope="session")
def mesh8():
    """(mesh, rules): FSDP over all 8 simulated devices."""
    assert len(jax.devices()) == 8, "tests expect 8 simulated CPU devices (XLA_FLAGS)"
    return make_mesh("fsdp")


@pytest.fixture(scope="session")
def mesh1():
    """(mesh, rules): the same config on a single device."""
    return make_mesh("fsdp", devices=jax.devices()[:1])
