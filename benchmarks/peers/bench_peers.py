"""Speed and memory of kfac-mem, kronfluence and the reference-style pipeline in one run.

  python -m benchmarks.peers.bench_peers --model smollm2-135m --windows 16 --seq-len 128 \
      --batch-size 4 --repeats 2 [--parts baseline,collect,eigen,edit,cli] [--threads 1]

Same HF directory, same `.npy` windows, empirical labels, float32. Every stage of every pipeline
runs in a fresh process (`worker`), so each reports its own peak RSS; within a repeat the
pipelines run back to back in an order rotated across repeats (interleaved, so machine load hits
all of them alike). Each framework is pinned to `--threads` threads (torch/MKL/OpenMP and
XLA:CPU alike; 1 by default: on an oversubscribed host single-threaded runs are far steadier).

Stages (selections: all MLP matrices of all blocks, and gate/up of three blocks at ~72% depth):
  baseline  one plain training step per batch (fwd + bwd, all parameter gradients) per framework
  collect   ours: `kfac_mem.collection` (JAX trace/compile seconds reported and subtracted; the
            final Orbax save included); kron: `fit_covariance_matrices`; ref: hooks with one pass
            over all windows per group of `--ref-layers-per-pass` blocks (for all_mlp also with
            every block in one pass: `ref-1pass`, the per-token hook cost). torch pipelines get
            one warm-up forward/backward first (their counterpart of compilation)
  eigen     (3-layer selection) ours `decompose_run` float32 (and float64) vs kronfluence's
            `perform_eigendecomposition` in float64 (its default) and float32
  edit      (3-layer selection, ρ = --rho) ours `edit_weight` vs the reference-style per-matrix
            loop (reload factors, float32 torch eigh, heap walk, dense product; times split)
  cli       the three `kfac-mem` commands end to end (process wall time)
Prints every worker line, then one summary line per (stage, selection, pipeline) with medians and
the median over repeats of ours-vs-peer ratios (> 1 = ours faster / smaller).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from benchmarks.peers import fixtures
from benchmarks.peers.measure import emit, median, thread_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PARTS = ("baseline", "collect", "eigen", "edit", "cli")


def run_worker(stage: str, env: dict, label: str, **flags) -> dict:
    """Run one worker process; its JSON line plus the process wall time and a label."""
    cmd = [sys.executable, "-m", "benchmarks.peers.worker", stage]
    argv = flags.pop("argv", None)
    for k, v in flags.items():
        flag = f"--{k.replace('_', '-')}"
        if v is True:
            cmd.append(flag)
        elif v not in (None, False):
            cmd += [flag, str(v)]
    if argv:
        cmd += ["--", *argv]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        row = {"stage": stage, "error": proc.stderr[-2000:], "rc": proc.returncode}
    else:
        row = json.loads(lines[-1])
    row.update(label=label, process_wall_s=wall)
    print(json.dumps(row), flush=True)
    return row


def rotate(items: list, r: int) -> list:
    k = r % len(items)
    return items[k:] + items[:k]


def one_repeat(r: int, args, hf: str, win: str, n_layers: int, env: dict) -> list[dict]:
    rows = []
    base = os.path.join(fixtures.workdir(args.workdir), "runs", args.model, f"r{r}")
    shutil.rmtree(base, ignore_errors=True)
    common = dict(hf=hf, windows=win, batch_size=args.batch_size)
    paper, proj3 = fixtures.selection_layers("3_layers_gate_up", n_layers)
    sel3 = dict(layers=f"{paper[0]}-{paper[-1]}", projections=",".join(proj3))
    parts = args.parts.split(",")
    if "baseline" in parts:
        for p in rotate(["ours", "kron"], r):
            label = {"ours": "jax", "kron": "torch"}[p]
            rows.append(run_worker("baseline", env, label, pipeline=p, tag="baseline", **common))
    if "collect" in parts:
        for sel in args.selections.split(","):
            layers, projs = fixtures.selection_layers(sel, n_layers)
            flags = dict(layers=f"{layers[0]}-{layers[-1]}", projections=",".join(projs))
            variants = {
                "ours": ("ours", 1),
                "kron": ("kron", 1),
                "ref": ("ref", args.ref_layers_per_pass),
            }
            if sel == "all_mlp" and args.ref_one_pass:
                variants["ref-1pass"] = ("ref", n_layers)
            if sel == "all_mlp" and args.ref_release_exec:
                variants["ref-release"] = ("ref", args.ref_layers_per_pass)
            for label in rotate(list(variants), r):
                pipeline, lpp = variants[label]
                extra = {"release_exec": label == "ref-release"}
                rows.append(
                    run_worker(
                        "collect",
                        env,
                        label,
                        pipeline=pipeline,
                        tag=sel,
                        layers_per_pass=lpp,
                        **extra,
                        out=os.path.join(base, f"{pipeline}-{sel}"),
                        **common,
                        **flags,
                    )
                )
            if sel == "all_mlp" and not args.keep:
                for p in ("ours", "kron", "ref"):
                    shutil.rmtree(os.path.join(base, f"{p}-{sel}"), ignore_errors=True)
    if "eigen" in parts:
        variants = {
            "ours": ("ours", "float32"),
            "ours-f64": ("ours", "float64"),
            "kron": ("kron", "float64"),
            "kron-f32": ("kron", "float32"),
        }
        for label in rotate(list(variants), r):
            pipeline, precision = variants[label]
            out = os.path.join(base, f"{pipeline}-3_layers_gate_up")
            rows.append(
                run_worker(
                    "eigen",
                    env,
                    label,
                    pipeline=pipeline,
                    precision=precision,
                    tag="3_layers_gate_up",
                    hf=hf,
                    out=out,
                    **sel3,
                )
            )
    if "edit" in parts:
        for p in rotate(["ours", "ref"], r):
            out = os.path.join(base, f"{p}-3_layers_gate_up")
            rows.append(
                run_worker(
                    "edit",
                    env,
                    p,
                    pipeline=p,
                    tag="3_layers_gate_up",
                    hf=hf,
                    out=out,
                    rho=args.rho,
                    **sel3,
                )
            )
    if "cli" in parts:
        from benchmarks.peers import ours

        steps = ours.cli_commands(
            hf, win, paper, proj3, args.batch_size, os.path.join(base, "cli"), args.rho
        )
        for step, argv in steps.items():
            rows.append(
                run_worker("cli", env, f"kfac-mem {step}", tag="3_layers_gate_up", argv=argv)
            )
    for row in rows:
        row["repeat"] = r
    return rows


def _ok(rows, **match) -> list[dict]:
    return [r for r in rows if "error" not in r and all(r.get(k) == v for k, v in match.items())]


def summarize(rows: list[dict], repeats: int) -> list[dict]:
    """Medians per (stage, tag, label) and median per-repeat ratios ours/peer."""
    out = []
    keys = sorted({(r["stage"], r.get("tag"), r["label"]) for r in _ok(rows)})
    for stage, tag, label in keys:
        sel = _ok(rows, stage=stage, tag=tag, label=label)
        s = {"summary": stage, "tag": tag, "label": label, "n": len(sel)}
        for field in (
            "seconds",
            "net_s",
            "compile_s",
            "tokens_per_s",
            "peak_rss_mib",
            "rss_after_load_mib",
            "select_s",
            "eigh_s",
            "reconstruct_s",
            "process_wall_s",
        ):
            m = median(r.get(field) for r in sel)
            if m is not None:
                s[field] = round(m, 4)
        out.append(s)

    def ratio(stage, tag, mine, peer, field, higher_better):
        vals = []
        for r in range(repeats):
            a = _ok(rows, stage=stage, tag=tag, label=mine, repeat=r)
            b = _ok(rows, stage=stage, tag=tag, label=peer, repeat=r)
            if a and b and a[0].get(field) and b[0].get(field):
                x, y = a[0][field], b[0][field]
                vals.append(x / y if higher_better else y / x)
        return median(vals)

    for tag in ("all_mlp", "3_layers_gate_up"):
        for peer in ("kron", "ref", "ref-1pass", "ref-release"):
            for field, hb in (("tokens_per_s", True), ("peak_rss_mib", False)):
                v = ratio("collect", tag, "ours", peer, field, hb)
                if v is not None:
                    out.append(
                        {
                            "ratio": f"collect {field} ours vs {peer}",
                            "tag": tag,
                            "value": round(v, 3),
                        }
                    )
    for peer in ("kron", "kron-f32"):
        for mine in ("ours", "ours-f64"):
            v = ratio("eigen", "3_layers_gate_up", mine, peer, "net_s", False)
            if v is not None:
                out.append({"ratio": f"eigen seconds {peer} / {mine}", "value": round(v, 3)})
    for field in ("select_s", "net_s"):
        v = ratio("edit", "3_layers_gate_up", "ours", "ref", field, False)
        if v is not None:
            out.append({"ratio": f"edit {field} ref / ours", "value": round(v, 3)})
    # Backend-neutral view: collection time over the same framework's plain training step.
    train = {
        f: median(r["seconds"] for r in _ok(rows, stage="baseline", label=f))
        for f in ("jax", "torch")
    }
    for tag in ("all_mlp", "3_layers_gate_up"):
        for label in ("ours", "kron", "ref", "ref-1pass", "ref-release"):
            net = median(r["net_s"] for r in _ok(rows, stage="collect", tag=tag, label=label))
            base = train["jax" if label == "ours" else "torch"]
            if net is not None and base:
                out.append(
                    {
                        "ratio": f"collect time / own training step: {label}",
                        "tag": tag,
                        "value": round(net / base, 3),
                    }
                )
    v = ratio("baseline", "baseline", "jax", "torch", "tokens_per_s", True)
    if v is not None:
        out.append({"ratio": "training step tokens/s jax vs torch", "value": round(v, 3)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=fixtures.MODELS, default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parts", default="baseline,collect,eigen,edit")
    ap.add_argument("--selections", default="all_mlp,3_layers_gate_up")
    ap.add_argument("--ref-layers-per-pass", type=int, default=5)
    ap.add_argument("--no-ref-one-pass", dest="ref_one_pass", action="store_false")
    ap.add_argument(
        "--ref-release-exec",
        action="store_true",
        help="all_mlp: also run ref as the release executes it (checkpointing, input grads)",
    )
    ap.add_argument("--rho", type=float, default=0.6)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the all_mlp factor directories")
    args = ap.parse_args()
    root = fixtures.workdir(args.workdir)
    hf = fixtures.hf_dir(root, args.model)
    win = fixtures.windows_path(root, args.model, args.windows, args.seq_len)
    n_layers = fixtures.hf_config(hf)["num_hidden_layers"]
    env = thread_env(args.threads)
    emit(
        bench="peers",
        config=vars(args),
        hf=hf,
        windows_npy=win,
        layers=n_layers,
        uptime=os.popen("uptime").read().strip(),
    )
    rows = []
    for r in range(args.repeats):
        rows += one_repeat(r, args, hf, win, n_layers, env)
    for s in summarize(rows, args.repeats):
        print(json.dumps(s), flush=True)
    emit(bench="peers-end", uptime=os.popen("uptime").read().strip())


if __name__ == "__main__":
    main()
