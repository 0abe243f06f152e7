"""A tiny OLMo-2 trained in-process to memorize windows: test bed for BSN and the comparison.

The training stream mixes three kinds of 32-token windows:

* clean text: noisy arithmetic progressions (x_{i+1} = x_i + d mod V with d ∈ {1..5}, each token
  replaced by a uniform one with probability `noise`): a shared rule the model generalizes;
* memorized windows: fixed uniform-random token sequences, [prefix | suffix] = [16 | 16];
* "quotes": fixed windows whose 24-token prefix is an ordinary clean progression and whose last
  8 tokens are fixed random tokens (the paper's out-of-distribution memorized set: prefix = all but
  the last 8 tokens, suffix 8).

After training, the evaluation suite's miner keeps the windows the model recites (teacher-forced
argmax on every suffix token) and splits the random ones into train (BSN's forget set, the tuning
set) and validation; the quotes are the OOD set. Held-out clean windows (perplexity, nDCG), a
separate retain set (BSN, relearning) and a sample of the training mixture (K-FAC factors) are
drawn from disjoint seeded streams.

Test-only (tests/test_bsn.py, test_compare.py, test_audit.py, test_sweep.py); not part of the
package. The test-size model's trained float32 weights are committed (tests/assets/toy-memorizer,
rewritten by `python tests/toy_memorizer.py`), so the suite does not train it in every module that
uses it; the sets are mined from it on the machine that runs the tests.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from kfac_mem.atomic import write_json_atomic, write_jsonl_atomic
from kfac_mem.evaluation.mining import MiningConfig, mine_windows
from kfac_mem.manifest import run_manifest
from kfac_mem.sharding import make_mesh
from kfac_mem.training import TrainConfig, train
from models import DecoderConfig, LanguageModel, export_hf, init_params, load_pretrained, save_model

STEPS = (1, 2, 3, 4, 5)  # progression steps of the clean language


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """Model size, data and training of the toy memorizer (defaults: the test size)."""

    hidden: int = 64
    intermediate: int = 128
    layers: int = 2
    vocab: int = 256
    n_memorized: int = 16  # random windows (split train / validation after mining)
    n_quotes: int = 8  # OOD quotes
    prefix: int = 16
    suffix: int = 16
    quote_suffix: int = 8
    noise: float = 0.1
    memorized_per_batch: int = 8
    batch_size: int = 16
    steps: int = 150
    learning_rate: float = 1e-2
    n_text: int = 64  # held-out clean windows
    n_retain: int = 128
    n_corpus: int = 256  # training-mixture windows for the K-FAC factors
    seed: int = 0

    @property
    def length(self) -> int:
        return self.prefix + self.suffix

    def decoder(self) -> DecoderConfig:
        return DecoderConfig(
            family="olmo2",
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_layers=self.layers,
            num_heads=4,
            num_kv_heads=2,
            head_dim=self.hidden // 4,
            rope_theta=10000.0,
            rms_norm_eps=1e-6,
            max_position_embeddings=128,
        )


SIZES = {
    "test": ToyConfig(),
    "small": ToyConfig(
        hidden=128,
        intermediate=512,
        layers=4,
        n_memorized=64,
        n_quotes=32,
        batch_size=32,
        steps=1500,
        learning_rate=3e-3,
        n_text=128,
        n_retain=256,
        n_corpus=1024,
    ),
}


@dataclasses.dataclass
class Toy:
    """The trained toy model and its sets (rows: `prefix_ids`, `suffix_ids`)."""

    model: LanguageModel
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    ood: list[dict[str, Any]]
    text: np.ndarray  # held-out clean windows [n_text, L]
    retain: np.ndarray  # clean windows for BSN / relearning [n_retain, L]
    corpus: np.ndarray  # training-mixture windows for factor collection [n_corpus, L]
    stats: dict[str, Any]
    config: ToyConfig


def clean_windows(n: int, c: ToyConfig, rng: np.random.Generator) -> np.ndarray:
    """`n` noisy progressions int32 [n, L] (see module doc)."""
    start = rng.integers(0, c.vocab, (n, 1))
    step = rng.choice(STEPS, (n, 1))
    x = (start + step * np.arange(c.length)[None]) % c.vocab
    noise = rng.random((n, c.length)) < c.noise
    return np.where(noise, rng.integers(0, c.vocab, (n, c.length)), x).astype(np.int32)


def memorized_windows(c: ToyConfig) -> tuple[np.ndarray, np.ndarray]:
    """(random windows [n_memorized, L], quotes [n_quotes, L]) fixed by the seed."""
    rng = np.random.default_rng((c.seed, 1))
    random = rng.integers(0, c.vocab, (c.n_memorized, c.length)).astype(np.int32)
    quotes = clean_windows(c.n_quotes, dataclasses.replace(c, noise=0.0), rng)
    quotes[:, -c.quote_suffix :] = rng.integers(0, c.vocab, (c.n_quotes, c.quote_suffix))
    return random, quotes


def mixture_batch(c: ToyConfig, pool: np.ndarray, stream: int, index: int) -> np.ndarray:
    """Batch `index` of a training-mixture stream: memorized rows from `pool`, the rest clean."""
    rng = np.random.default_rng((c.seed, 2, stream, index))
    mem = pool[rng.choice(len(pool), c.memorized_per_batch, replace=False)]
    clean = clean_windows(c.batch_size - c.memorized_per_batch, c, rng)
    return np.concatenate([mem, clean])


ASSET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "toy-memorizer")


def train_toy(c: ToyConfig, mesh, rules, log: Callable[[str], None] | None = None):
    """(model, loss history): the toy model trained from scratch with `kfac_mem.training.train`."""
    random, quotes = memorized_windows(c)
    pool = np.concatenate([random, quotes])
    config = c.decoder()
    model = LanguageModel(
        config, init_params(config, c.seed, mesh, rules), None, mesh, rules, source="toy"
    )
    params, history = train(
        model,
        lambda i: mixture_batch(c, pool, 0, i),
        TrainConfig(
            steps=c.steps,
            batch_size=c.batch_size,
            learning_rate=c.learning_rate,
            warmup_steps=min(50, c.steps // 10),
            weight_decay=0.0,
            log_every=max(1, c.steps // 5),
        ),
        log=log,
    )
    return model.with_params(params), history


def _committed(c: ToyConfig, mesh, rules) -> LanguageModel | None:
    """The committed weights of the test-size toy (tests/assets/toy-memorizer, written by
    `python tests/toy_memorizer.py`), when `c` is the config they were trained with."""
    info = os.path.join(ASSET, "toy.json")
    if not os.path.isfile(info):
        return None
    with open(info) as f:
        if json.load(f)["config"] != dataclasses.asdict(c):
            return None
    return load_pretrained(ASSET, mesh=mesh, rules=rules)


def build_toy(
    c: ToyConfig = ToyConfig(),
    mesh=None,
    rules=None,
    log: Callable[[str], None] | None = None,
    retrain: bool = False,
) -> Toy:
    """The toy model and its sets: the committed weights of the test-size config (unless
    `retrain`), else trained from scratch; the sets are mined on this machine either way, so
    they are what this machine's model recites.

    Without a mesh the model is placed on a one-device mesh (every array committed to its
    sharding, like any loaded model, so edited parameter trees reuse compiled functions).
    """
    if mesh is None:
        mesh, rules = make_mesh("fsdp", devices=jax.devices()[:1])
    model, history = (None, [])
    if not retrain:
        model = _committed(c, mesh, rules)
    if model is None:
        model, history = train_toy(c, mesh, rules, log)
    model.source = f"toy:{c.seed}"
    random, quotes = memorized_windows(c)
    pool = np.concatenate([random, quotes])
    main = mine_windows(
        model,
        random,
        [("toy-random", i, 0) for i in range(len(random))],
        MiningConfig(c.prefix, c.suffix, stride=c.length, max_jaccard=0.5, seed=c.seed),
    )
    q = c.length - c.quote_suffix
    ood = mine_windows(
        model,
        quotes,
        [("toy-quotes", i, 0) for i in range(len(quotes))],
        MiningConfig(q, c.quote_suffix, stride=c.length, max_jaccard=0.5, val_fraction=1.0),
    )
    stats = {
        "memorized": main["stats"]["memorized"],
        "candidates": main["stats"]["candidates"],
        "quotes_memorized": ood["stats"]["memorized"],
        "quotes_candidates": ood["stats"]["candidates"],
        "final_train_loss": history[-1]["loss"] if history else None,
    }
    corpus = np.concatenate(
        [mixture_batch(c, pool, 1, i) for i in range(-(-c.n_corpus // c.batch_size))]
    )[: c.n_corpus]
    return Toy(
        model=model,
        train=main["train"],
        validation=main["validation"],
        ood=ood["validation"],
        text=clean_windows(c.n_text, c, np.random.default_rng((c.seed, 3))),
        retain=clean_windows(c.n_retain, c, np.random.default_rng((c.seed, 4))),
        corpus=corpus,
        stats=stats,
        config=c,
    )


@functools.lru_cache(maxsize=2)
def cached_toy(c: ToyConfig = ToyConfig(), mesh=None, rules=None) -> Toy:
    """`build_toy`, once per (config, placement) in a process (tests share one trained model)."""
    return build_toy(c, mesh, rules)


def write_toy(toy: Toy, out_dir: str) -> dict[str, str]:
    """Write model/ (Orbax), train/validation/ood jsonl and text/retain/corpus npy; returns paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "model": save_model(toy.model, os.path.join(out_dir, "model"), overwrite=True),
        "train": write_jsonl_atomic(os.path.join(out_dir, "train.jsonl"), toy.train),
        "validation": write_jsonl_atomic(os.path.join(out_dir, "validation.jsonl"), toy.validation),
        "ood": write_jsonl_atomic(os.path.join(out_dir, "ood.jsonl"), toy.ood),
    }
    for name in ("text", "retain", "corpus"):
        paths[name] = os.path.join(out_dir, f"{name}.npy")
        np.save(paths[name], getattr(toy, name))
    write_json_atomic(
        os.path.join(out_dir, "toy.json"),
        {"config": dataclasses.asdict(toy.config), "stats": toy.stats, "paths": paths},
    )
    return paths


def write_asset(c: ToyConfig = ToyConfig()) -> None:
    """Train the test-size toy and commit its float32 weights to tests/assets/toy-memorizer/."""
    mesh, rules = make_mesh("fsdp", devices=jax.devices()[:1])
    model, history = train_toy(c, mesh, rules, log=print)
    export_hf(model.config, model.params, ASSET)
    write_json_atomic(
        os.path.join(ASSET, "toy.json"),
        {
            "config": dataclasses.asdict(c),
            "command": "python tests/toy_memorizer.py",
            "final_train_loss": history[-1]["loss"],
            "fingerprint": model.fingerprint(),
            "manifest": run_manifest({"init": c.seed}),
        },
    )
    print(f"wrote {ASSET}")


if __name__ == "__main__":
    write_asset()
