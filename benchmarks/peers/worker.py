"""One stage of one pipeline in a fresh process; prints one JSON line (used by `bench_peers`).

  python -m benchmarks.peers.worker collect  --pipeline ours|kron|ref --hf DIR --windows NPY \
      --layers 0-29 --projections gate,up,down --batch-size 4 --out DIR [--layers-per-pass 5]
  python -m benchmarks.peers.worker eigen    --pipeline ours|kron --out DIR [--precision float64]
  python -m benchmarks.peers.worker edit     --pipeline ours|ref --hf DIR --layers ... --out DIR
  python -m benchmarks.peers.worker baseline --pipeline ours|kron --hf DIR --windows NPY
  python -m benchmarks.peers.worker cli      -- <kfac-mem argv>

Every line carries the stage's wall seconds, the JAX trace/compile seconds inside them (ours),
the RSS right after the model or inputs were loaded and the process's peak RSS (MiB).
Tokens are window tokens (windows × seq_len); factors use B·(S−1) positions of them.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks.peers.measure import compile_seconds, emit, peak_rss_mib, rss_mib


def _ids(args) -> tuple[list[int], tuple[str, ...], list[str]]:
    from benchmarks.peers.fixtures import site_ids

    lo, _, hi = args.layers.partition("-")
    layers = list(range(int(lo), int(hi or lo) + 1))
    projections = tuple(args.projections.split(","))
    return layers, projections, site_ids(layers, projections)


def collect(args) -> dict:
    layers, projections, ids = _ids(args)
    windows = np.load(args.windows)
    tokens = int(windows.size)
    if args.pipeline == "ours":
        from benchmarks.peers import ours

        compile_seconds()
        model, load_s = ours.load(args.hf)
        rss0 = rss_mib()
        out = os.path.join(args.out, "factors")
        r = ours.collect(model, args.windows, ids, out, args.batch_size, reduce=args.reduce)
        peak = peak_rss_mib()  # before re-timing the disk steps (they hold extra copies)
        io = ours.io_seconds(r["run"], os.path.join(args.out, "resave"))
        # Peers write their factors too (kept in); `collect` also re-reads them to return a
        # FactorRun, which no peer does: that read-back is taken out with the compile time.
        steady = r["seconds"] - r["compile_s"] - io["read_back_s"]
        return {
            "peak_rss_mib": peak,
            "seconds": r["seconds"],
            "compile_s": r["compile_s"],
            **io,
            "compute_s": steady - io["save_s"],
            "load_s": load_s,
            "rss_after_load_mib": rss0,
            "tokens": tokens,
            "tokens_per_s": tokens / steady,
        }
    from benchmarks.peers.fixtures import load_torch_model, warm_up_torch

    t0 = time.perf_counter()
    if args.pipeline == "kron":
        from benchmarks.peers import kron

        az = kron.analyzer(args.hf, ids, args.out)
        load_s, rss0 = time.perf_counter() - t0, rss_mib()
        warm_up_torch(az.model, windows)
        r = kron.fit(az, windows, args.batch_size, empirical=True)
        extra = {}
    else:
        from benchmarks.peers import reference_style

        model = load_torch_model(args.hf)
        load_s, rss0 = time.perf_counter() - t0, rss_mib()
        warm_up_torch(model, windows)
        r = reference_style.collect_groups(
            model,
            windows,
            layers,
            projections,
            args.layers_per_pass,
            args.batch_size,
            args.out,
            release_execution=args.release_exec,
        )
        extra = {
            "groups": len(r["group_seconds"]),
            "layers_per_pass": args.layers_per_pass,
            "release_execution": args.release_exec,
        }
    return {
        "seconds": r["seconds"],
        "load_s": load_s,
        "rss_after_load_mib": rss0,
        "tokens": tokens,
        "tokens_per_s": tokens / r["seconds"],
        **extra,
    }


def eigen(args) -> dict:
    if args.pipeline == "ours":
        from benchmarks.peers import ours

        compile_seconds()
        rss0 = rss_mib()
        name = "eigen" if args.precision == "float32" else f"eigen-{args.precision}"
        r = ours.decompose(
            os.path.join(args.out, "factors"), os.path.join(args.out, name), args.precision
        )
        n = len(r["eigen"].metadata["entries"])
        return {
            "seconds": r["seconds"],
            "compile_s": r["compile_s"],
            "matrices": n,
            "precision": args.precision,
            "rss_after_load_mib": rss0,
        }
    import torch

    from benchmarks.peers import kron

    _, _, ids = _ids(args)
    az = kron.analyzer(args.hf, ids, args.out)
    rss0 = rss_mib()
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.precision]
    r = kron.eigen(az, dtype=dtype)
    return {
        "seconds": r["seconds"],
        "matrices": 2 * len(r["eigenvalues"]),
        "precision": args.precision,
        "rss_after_load_mib": rss0,
    }


def edit(args) -> dict:
    from benchmarks.peers import ours

    _, _, ids = _ids(args)
    ids = [s for s in ids if not s.endswith("down_proj")]
    weights = ours.hf_weights(args.hf, ids)
    if args.pipeline == "ours":
        compile_seconds()
        rss0 = rss_mib()
        r = ours.edit(os.path.join(args.out, "eigen"), weights, args.rho)
        return {
            "seconds": r["seconds"],
            "compile_s": r["compile_s"],
            "select_s": r["select_s"],
            "matrices": len(ids),
            "kept": r["kept"],
            "rss_after_load_mib": rss0,
        }
    import torch

    from benchmarks.peers import reference_style

    files = sorted(
        os.path.join(args.out, f) for f in os.listdir(args.out) if f.startswith("kfac_factors")
    )
    rss0 = rss_mib()
    t0 = time.perf_counter()
    r = reference_style.edit_from_files(
        files, {s: torch.from_numpy(np.array(w)) for s, w in weights.items()}, args.rho
    )
    seconds = time.perf_counter() - t0
    total = lambda k: sum(v[k] for v in r.values())  # noqa: E731
    return {
        "seconds": seconds,
        "eigh_s": total("eigh_s"),
        "select_s": total("select_s"),
        "reconstruct_s": total("reconstruct_s"),
        "load_factors_s": total("load_s"),
        "matrices": len(ids),
        "kept": {s: int(v["mask"].sum()) for s, v in r.items()},
        "rss_after_load_mib": rss0,
    }


def baseline(args) -> dict:
    """One plain training step per batch (summed next-token CE, gradients of every parameter):
    how fast each framework's forward+backward is on this machine."""
    windows = np.load(args.windows)
    batches = [windows[i : i + args.batch_size] for i in range(0, len(windows), args.batch_size)]
    if args.pipeline == "ours":
        import jax
        import jax.numpy as jnp

        from benchmarks.peers import ours

        model, _ = ours.load(args.hf)

        def loss(params, tokens):
            inputs, labels, weights = model.loss_targets(tokens)
            logp = jax.nn.log_softmax(model.apply(params, inputs)[0].astype(jnp.float32))
            return -jnp.sum(jnp.take_along_axis(logp, labels[..., None], -1)[..., 0] * weights)

        step = jax.jit(jax.value_and_grad(loss))
        c0 = compile_seconds()
        jax.block_until_ready(step(model.params, jnp.asarray(batches[0], jnp.int32)))
        first = compile_seconds() - c0
        t0 = time.perf_counter()
        for b in batches:
            jax.block_until_ready(step(model.params, jnp.asarray(b, jnp.int32)))
        seconds = time.perf_counter() - t0
        return {
            "seconds": seconds,
            "first_call_compile_s": first,
            "tokens": int(windows.size),
            "tokens_per_s": windows.size / seconds,
        }
    import torch
    from torch.nn import functional as F

    from benchmarks.peers.fixtures import load_torch_model, warm_up_torch

    model = load_torch_model(args.hf)
    warm_up_torch(model, windows)
    t0 = time.perf_counter()
    for b in batches:
        x = torch.as_tensor(np.asarray(b, np.int64))
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=x).logits[:, :-1].float()
        F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        ).backward()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tokens": int(windows.size), "tokens_per_s": windows.size / seconds}


def cli(args) -> dict:
    from kfac_mem.cli import main as kfac_main

    compile_seconds()
    t0 = time.perf_counter()
    rc = kfac_main(args.argv)
    return {"seconds_in_main": time.perf_counter() - t0, "compile_s": compile_seconds(), "rc": rc}


STAGES = {"collect": collect, "eigen": eigen, "edit": edit, "baseline": baseline, "cli": cli}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=sorted(STAGES))
    ap.add_argument("--pipeline", choices=("ours", "kron", "ref"), default="ours")
    ap.add_argument("--hf")
    ap.add_argument("--windows")
    ap.add_argument("--layers", default="0")
    ap.add_argument("--projections", default="gate,up,down")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--layers-per-pass", type=int, default=1)
    ap.add_argument("--reduce", default="step", help="ours: when partial sums are reduced")
    ap.add_argument("--release-exec", action="store_true", help="ref: checkpointing + input grads")
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--rho", type=float, default=0.6)
    ap.add_argument("--out")
    ap.add_argument("--tag", default="", help="copied into the output line")
    args, rest = ap.parse_known_args()
    if rest and args.stage != "cli":
        ap.error(f"unrecognized arguments: {rest}")
    args.argv = rest[1:] if rest[:1] == ["--"] else rest  # cli: the kfac-mem arguments
    row = STAGES[args.stage](args)
    if "seconds" in row:  # what the stage costs once compiled (ours) / warmed up (torch)
        row["net_s"] = row["seconds"] - sum(
            row.get(k, 0.0) for k in ("compile_s", "read_back_s", "eigh_s")
        )
    emit(
        stage=args.stage,
        pipeline=args.pipeline,
        tag=args.tag,
        peak_rss_mib=row.pop("peak_rss_mib", peak_rss_mib()),
        threads=os.environ.get("OMP_NUM_THREADS"),
        **row,
    )


if __name__ == "__main__":
    main()
