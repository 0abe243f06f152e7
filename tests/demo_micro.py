"""A micro LM demo whose trained model and summary are committed under tests/assets/demo-micro/.

`micro_config()` is the tiny demo preset shrunk further (a 2-layer OLMo-2 with d = 32 and tied
embeddings, ≈ 29k parameters, 58 KB in bf16; the analyzer stage off; smaller evaluation sets), so
every other stage of `kfac-mem demo` runs from the committed checkpoint in seconds on one device.

Regenerate the assets (only when the pipeline's outputs change on purpose) with

    PYTHONPATH=$PWD .venv/bin/python tests/demo_micro.py

which trains the model (`demo_model(..., retrain=True)`), writes it with `export_asset` (bf16 HF
checkpoint, tokenizer, provenance.json), reruns the demo from that committed checkpoint on a
one-device mesh and writes `expected_summary.json`: the summary's reproducible fields
(`reproducible`), not the whole summary (which holds timings and machine paths). With
`--summary-only` it keeps the committed checkpoint and rewrites only `expected_summary.json`.

Test-only (tests/test_demo_seeds.py); not part of the package.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from typing import Any

ASSET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo-micro")
EXPECTED = os.path.join(ASSET, "expected_summary.json")
VARIANTS = ("unedited", "kfac", "svd", "random_basis")
SETS = ("memorized_train", "memorized_validation", "canaries")


def micro_config(asset: str | None = ASSET):
    """The micro demo (see module doc); `asset=None` trains the model instead of loading it."""
    from kfac_mem.demo.config import DemoConfig

    return dataclasses.replace(
        DemoConfig.tiny(),
        name="micro",
        asset=asset,
        model_overrides=(
            ("hidden_size", 32),
            ("intermediate_size", 64),
            ("num_heads", 2),
            ("num_kv_heads", 1),
            ("head_dim", 16),
            ("tie_word_embeddings", True),
        ),
        train_steps=300,
        factor_windows=32,
        eval_text_windows=8,
        ndcg_windows=4,
        eval_items=8,
        analysis=False,
    )


def _count(rate: float, n: int) -> int | None:
    """k of a rate k / n (None for an empty set, whose rate is NaN)."""
    return round(rate * n) if n else None


def reproducible(summary: dict[str, Any]) -> dict[str, Any]:
    """The fields of a demo summary that a rerun from the committed checkpoint must reproduce.

    "exact": counts and decisions (mining counts, factor positions, the chosen edit and SVD drop,
    k of n per variant, memorized set and skill group). "close": floats of the same run
    (perplexity, nDCG@10, mean d/L), compared within a tolerance (tests/test_demo_seeds.py).
    """
    t = summary["table1"]
    exact: dict[str, Any] = {
        "mined": {
            name: {
                k: summary["mined"][name][k]
                for k in ("candidates", "memorized", "after_dedup", "train", "validation")
            }
            for name in ("memorized", "canaries")
        },
        "factor_positions": summary["factors"]["n_tokens"],
        "chosen": summary["chosen"],
        "svd_drop": summary["svd_drop"],
        "recitation": {
            v: {
                s: {
                    "n": t[v][s]["n"],
                    "strict_k": _count(t[v][s]["strict"], t[v][s]["n"]),
                    "loose_k": _count(t[v][s]["loose"], t[v][s]["n"]),
                }
                for s in SETS
            }
            for v in VARIANTS
        },
        "skills": {
            v: {g: {"n": n, "k": _count(t[v]["skills"][g], n)} for g, n in t[v]["skill_n"].items()}
            for v in VARIANTS
        },
    }
    close = {
        v: {
            "perplexity": t[v]["perplexity"],
            "ndcg@10": t[v]["ndcg@10"],
            **{f"mean_distance_{s}": t[v][s]["mean_distance"] for s in SETS if t[v][s]["n"]},
        }
        for v in VARIANTS
    }
    return {"exact": exact, "close": close}


def main() -> None:
    import jax

    from kfac_mem.atomic import write_json_atomic
    from kfac_mem.demo.model import demo_model, export_asset
    from kfac_mem.demo.pipeline import run_demo
    from kfac_mem.sharding import make_mesh

    mesh, rules = make_mesh("fsdp", devices=jax.devices()[:1])
    with tempfile.TemporaryDirectory() as tmp:
        if "--summary-only" not in sys.argv:
            model, _, provenance = demo_model(micro_config(None), tmp, mesh, rules, retrain=True)
            provenance["command"] = "PYTHONPATH=$PWD .venv/bin/python tests/demo_micro.py"
            export_asset(model, provenance, ASSET)
        summary = run_demo(micro_config(), os.path.join(tmp, "run"), mesh, rules, log=print)
    write_json_atomic(EXPECTED, reproducible(summary))
    print(json.dumps(reproducible(summary)["exact"]["recitation"]["kfac"], indent=1))
    print(f"wrote {ASSET}", file=sys.stderr)


if __name__ == "__main__":
    main()
