"""Output directories: a stage never writes into a user's directory, an input of the same command,
or another stage's run; a second writer is refused; corrupt artifacts are refused before anything
is written. Every case checks the one-line message, exit code 2, and that the user's files are
byte-identical afterwards (checksums of every file under the directory)."""

import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from factor_fixtures import write_factor_run

from kfac_mem.cli import main as cli_main
from kfac_mem.decomposition.store import decompose_run
from kfac_mem.errors import CorruptArtifactError, NonFiniteError, OutputDirError, RunLockedError
from kfac_mem.rundir import MARKER, check_output, claim, kind_of
from models import export_hf, load_pretrained, save_model

EDIT = ["--layers", "0", "--rho", "0.9"]
Q1 = "model.layers.1.self_attn.q_proj"


def tree_digest(root) -> dict[str, str]:
    """sha256 of every file under `root` (relative path -> digest); {} when it does not exist."""
    out = {}
    for r, _, files in os.walk(root):
        for f in files:
            path = os.path.join(r, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def run_cli(argv, capsys) -> tuple[int, str]:
    rc = cli_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


@pytest.fixture(scope="module")
def tiny(mesh8):
    return load_pretrained("tiny-olmo2", mesh=mesh8[0], rules=mesh8[1])


@pytest.fixture(scope="module")
def runs(tiny, mesh8, tmp_path_factory):
    """A factor run, its eigen run, an HF directory of the model (with a file of its own)."""
    root = tmp_path_factory.mktemp("runs")
    # One square layer (q_proj: A and G both d x d): one eigh compilation.
    sites = [s for s in tiny.linear_sites() if s.id == Q1]
    factors = write_factor_run(str(root / "factors"), tiny, sites=sites)
    from kfac_mem import load_factors

    eigen = decompose_run(load_factors(factors), str(root / "eigen"), *mesh8).directory
    hf = str(root / "hf model")
    export_hf(tiny.config, tiny.params, hf)
    with open(os.path.join(hf, "generation_config.json"), "w") as f:
        f.write('{"do_sample": false}\n')
    return {"factors": factors, "eigen": eigen, "hf": hf, "root": root}


def user_dir(tmp_path):
    d = tmp_path / "mine"
    (d / "params").mkdir(parents=True)
    (d / "params" / "notes.txt").write_text("my notes\n")
    (d / "config.yaml").write_text("lr: 0.1\n")
    (d / "report.json").write_text('{"mine": true}\n')
    return d


def test_export_into_the_input_model_dir_is_refused(runs, capsys, tmp_path):
    before = tree_digest(runs["hf"])
    argv = ["edit", "--model", runs["hf"], "--eigen", runs["eigen"], "--out", str(tmp_path / "e")]
    rc, msg = run_cli([*argv, "--export-hf", runs["hf"], *EDIT], capsys)
    assert rc == 2 and "--export-hf" in msg and "is the input --model" in msg
    # Another HF directory (not written by this tool) is refused too, --overwrite or not.
    other = tmp_path / "other-hf"
    shutil.copytree(runs["hf"], other)
    rc, msg = run_cli([*argv, "--export-hf", str(other), "--overwrite", *EDIT], capsys)
    assert rc == 2 and "not written by kfac-mem" in msg and "generation_config.json" in msg
    assert tree_digest(runs["hf"]) == before and tree_digest(other) == before
    assert not (tmp_path / "e").exists()


def test_user_directory_is_never_written(runs, capsys, tmp_path):
    d = user_dir(tmp_path)
    before = tree_digest(d)
    for argv in (
        ["edit", "--model", "tiny-olmo2", "--eigen", runs["eigen"], "--out", str(d), *EDIT],
        [
            "edit",
            "--model",
            "tiny-olmo2",
            "--eigen",
            runs["eigen"],
            "--out",
            str(d),
            "--overwrite",
            *EDIT,
        ],
        ["collect", "--model", "tiny-olmo2", "--data", runs["hf"], "--out", str(d)],
        ["decompose", "--factors", runs["factors"], "--out", str(d), "--overwrite"],
    ):
        rc, msg = run_cli(argv, capsys)
        assert rc == 2, argv
        assert f"--out {d} is not empty and was not written by kfac-mem" in msg, msg
        assert "config.yaml" in msg and "nothing was changed" in msg
    assert tree_digest(d) == before


def test_input_is_never_the_output(runs, tiny, capsys, tmp_path):
    model_dir = save_model(tiny, str(tmp_path / "model"))
    before = tree_digest(model_dir)
    argv = ["edit", "--model", model_dir, "--eigen", runs["eigen"], "--out", model_dir]
    rc, msg = run_cli([*argv, "--overwrite", *EDIT], capsys)
    assert rc == 2 and "is the input --model" in msg
    assert tree_digest(model_dir) == before
    # decompose --factors F --out F: F is the input and a factor run, --overwrite or not.
    fbefore = tree_digest(runs["factors"])
    for extra in ([], ["--overwrite"]):
        argv = ["decompose", "--factors", runs["factors"], "--out", runs["factors"], *extra]
        rc, msg = run_cli(argv, capsys)
        assert rc == 2 and "is the input --factors" in msg and "pass --overwrite" not in msg
    # Another stage's run is never replaced, even with --overwrite.
    argv = ["decompose", "--factors", runs["factors"], "--out", model_dir, "--overwrite"]
    rc, msg = run_cli(argv, capsys)
    assert rc == 2 and "holds an edited model" in msg and "not an eigen run" in msg
    assert tree_digest(runs["factors"]) == fbefore and tree_digest(model_dir) == before


def test_markers_and_legacy_runs(runs, tmp_path):
    # Runs written before markers existed are recognised by their metadata (they still resume).
    assert kind_of(runs["factors"]) == "factors" and kind_of(runs["eigen"]) == "eigen"
    assert kind_of(runs["hf"]) == "user" and kind_of(str(tmp_path / "none")) is None
    assert check_output(runs["factors"], "factors") == os.path.realpath(runs["factors"])
    with pytest.raises(OutputDirError, match=r"`out_dir`.*already holds an eigen run.*`overwrite`"):
        check_output(runs["eigen"], "eigen", replace_needs_overwrite=True)
    # A claim marks a new directory first; a failed run leaves no trace of the claim.
    new = tmp_path / "new"
    with pytest.raises(RuntimeError), claim(str(new), "evaluation"):
        assert (new / MARKER).is_file()
        raise RuntimeError("stage failed before writing")
    assert not new.exists()
    with claim(str(new), "evaluation"):
        (new / "results.json").write_text("{}")
    assert kind_of(str(new)) == "evaluation"
    with pytest.raises(OutputDirError, match="holds an evaluation"):
        check_output(str(new), "analysis", overwrite=True)


_HOLDER = """
import sys, time
from kfac_mem.rundir import claim
with claim(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    time.sleep(120)
"""


def _hold_in_child(out, kind: str = "factors") -> subprocess.Popen:
    """A second process (a fresh interpreter, not a fork of this multithreaded one) that claims
    `out` (a real flock from another pid) and waits."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out), kind], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_with_the_holders_pid(tmp_path, capsys):
    """Two processes on one run directory: the second is refused, naming the first's pid."""
    out = tmp_path / "run"
    holder = _hold_in_child(out)
    pid = holder.pid
    try:
        before = tree_digest(out)
        with pytest.raises(
            RunLockedError, match=rf"being written by another process \(pid {pid} on "
        ):
            claim(str(out), "factors")
        data = tmp_path / "tok.npy"
        np.save(data, np.zeros((8, 8), np.int32))
        argv = ["collect", "--model", "tiny-olmo2", "--data", str(data), "--out", str(out)]
        rc, msg = run_cli([*argv, "--no-progress"], capsys)
        assert rc == 2 and f"--out {out} is being written by another process (pid {pid}" in msg
        assert tree_digest(out) == before
    finally:
        holder.kill()
        holder.wait()
    with claim(str(out), "factors"):  # released when the holder dies
        pass


@pytest.mark.parametrize("stage", ["analysis", "evaluation"])
def test_library_stages_lock_their_output(stage, tiny, runs, tmp_path):
    """Called from Python (no CLI), `analyze` and `run_evaluation` hold the lock too: a directory
    another process is writing is refused, naming its pid, and left as it was."""
    from kfac_mem.analysis import analyze
    from kfac_mem.evaluation import run_evaluation

    out = tmp_path / stage
    holder = _hold_in_child(out, stage)
    rows = [{"prefix_ids": [1, 2, 3, 4], "suffix_ids": [5, 6, 7, 8]}] * 8
    try:
        before = tree_digest(out)
        with pytest.raises(RunLockedError, match=rf"another process \(pid {holder.pid} "):
            if stage == "analysis":
                analyze(tiny, runs["eigen"], {"memorized": rows}, out_dir=str(out), log=None)
            else:
                run_evaluation(
                    tiny, memorized={"m": rows}, suites="recitation", out_dir=str(out), log=None
                )
        assert tree_digest(out) == before
    finally:
        holder.kill()
        holder.wait()


def _corrupt_copy(eigen_dir, dest):
    """A copy of an eigen run with 64 bytes of its largest chunk file flipped."""
    shutil.copytree(eigen_dir, dest)
    chunk_files = sorted(
        (p for p in (dest / "chunks").rglob("*") if p.is_file() and p.stat().st_size > 4096),
        key=lambda p: -p.stat().st_size,
    )
    data = bytearray(chunk_files[0].read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    chunk_files[0].write_bytes(bytes(data))
    return dest


def test_corrupt_eigen_chunk_is_refused_on_load(runs, tmp_path):
    from kfac_mem.decomposition.store import load_eigen

    eigen = _corrupt_copy(runs["eigen"], tmp_path / "eigen")
    with pytest.raises((CorruptArtifactError, NonFiniteError), match=rf"{Q1}.*{eigen}.*corrupt"):
        load_eigen(str(eigen)).site(Q1)
    load_eigen(runs["eigen"]).site(Q1)  # the original reads


@pytest.mark.slow
def test_corrupt_eigen_chunk_edit_writes_nothing(runs, capsys, tmp_path):
    eigen = _corrupt_copy(runs["eigen"], tmp_path / "eigen")
    out = tmp_path / "edited"
    argv = ["edit", "--model", "tiny-olmo2", "--eigen", str(eigen), "--out", str(out)]
    rc, msg = run_cli([*argv, "--layers", "1", "--projections", "q", "--rho", "0.9"], capsys)
    assert rc == 2 and f"eigen run {eigen}" in msg and "corrupt" in msg and Q1 in msg, msg
    assert not out.exists()


def test_deleted_metadata_of_an_interrupted_run_is_not_resumed(tiny, runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["factors"], run)
    with claim(str(run), "factors"):  # as a run written by this version: marked
        pass
    os.remove(run / "metadata.json")
    before = tree_digest(run)
    from kfac_mem.collection.config import CollectConfig
    from kfac_mem.collection.run import collect
    from kfac_mem.data import load_windows

    data = tmp_path / "other.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (8, 16)).astype(np.int32))
    windows = load_windows([str(data)])
    with pytest.raises(CorruptArtifactError, match=r"state/\) but no metadata.json"):
        collect(tiny, windows, tiny.linear_sites()[-3:], str(run), CollectConfig(mode="empirical"))
    assert tree_digest(run) == before
    # Without its marker too, nothing identifies the directory: refused as not ours.
    os.remove(run / MARKER)
    with pytest.raises(OutputDirError, match="not written by kfac-mem"):
        collect(tiny, windows, tiny.linear_sites()[-3:], str(run), CollectConfig(mode="empirical"))


def test_truncated_model_files_name_the_file(tiny, capsys, tmp_path):
    model_dir = save_model(tiny, str(tmp_path / "model"))
    with open(os.path.join(model_dir, "model_config.json"), "r+") as f:
        f.truncate(40)
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", model_dir, "--suites", "perplexity", "--text", model_dir]
    rc, msg = run_cli([*argv, "--out", str(out)], capsys)
    assert rc == 2 and model_dir in msg and "cannot be loaded" in msg
    assert not out.exists()
