"""The demo's data: a BPE tokenizer trained on real text, the training mixture (general passages,
skills, memorized passages and canaries), and every held-out split the pipeline evaluates on.

Training rows are `seq_len` tokens of BOS-separated segments. With probability `memorized_rate` a
row starts with one memorized item (a natural passage window or a random-word canary, each item
equally often); the rest of the row is general text and skill examples. Rows are a deterministic
function of (seed, row index), so training resumes exactly and the factor corpus can be fresh draws
of the same distribution.
"""

from __future__ import annotations

import dataclasses
import functools
import random

import numpy as np

from kfac_mem.demo.corpus import all_passages
from kfac_mem.demo.skills import SkillSet
from kfac_mem.validation import check_fields

BOS = "<|bos|>"


@dataclasses.dataclass(frozen=True)
class MixtureConfig:
    seed: int = 0
    vocab_size: int = 2048
    seq_len: int = 128
    n_memorized: int = 96  # natural passages to memorize (held out of the general text)
    n_canaries: int = 32  # random-word sequences to memorize (the out-of-distribution set)
    prefix_len: int = 32
    suffix_len: int = 32  # memorized natural windows are prefix + suffix tokens
    canary_prefix_len: int = 16
    canary_suffix_len: int = 16
    memorized_rate: float = 0.4  # share of rows that carry one memorized item
    skill_rate: float = 0.3  # share of segments (after the memorized one) that are skill examples
    n_heldout_passages: int = 400
    n_capitals: int = 100

    def __post_init__(self):
        check_fields(
            self,
            at_least_one=(
                "vocab_size",
                "seq_len",
                "prefix_len",
                "suffix_len",
                "canary_prefix_len",
                "canary_suffix_len",
            ),
            non_negative=("seed", "n_memorized", "n_canaries", "n_heldout_passages", "n_capitals"),
            fractions=("memorized_rate", "skill_rate"),
        )
        for prefix, suffix in (
            ("prefix_len", "suffix_len"),
            ("canary_prefix_len", "canary_suffix_len"),
        ):
            if getattr(self, prefix) + getattr(self, suffix) > self.seq_len:
                raise ValueError(
                    f"`{prefix}` + `{suffix}` ({getattr(self, prefix)} + {getattr(self, suffix)}) "
                    f"must fit in `seq_len` ({self.seq_len})."
                )

    @property
    def window(self) -> int:
        return self.prefix_len + self.suffix_len


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with single-digit pre-tokenization, trained deterministically on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


class DemoData:
    """All data of the demo, built from `MixtureConfig` (and the tokenizer, trained or given)."""

    def __init__(self, config: MixtureConfig = MixtureConfig(), tokenizer=None):
        self.config = c = config
        rng = random.Random(c.seed)
        sources = all_passages()
        lambada = list(sources["lambada"])
        rng.shuffle(lambada)
        wiki = sources["boolq"] + sources["squad"] + sources["drop"]
        rng.shuffle(wiki)
        self.skills = SkillSet(seed=c.seed, n_capitals=c.n_capitals)
        # Held out of training entirely: candidate memorized passages and held-out evaluation text.
        candidates = lambada[: 3 * c.n_memorized]
        heldout = lambada[3 * c.n_memorized : 3 * c.n_memorized + c.n_heldout_passages // 2]
        heldout += wiki[: c.n_heldout_passages // 2]
        self.general = (
            lambada[3 * c.n_memorized + c.n_heldout_passages // 2 :]
            + wiki[c.n_heldout_passages // 2 :]
        )
        rng.shuffle(self.general)
        if tokenizer is None:
            skill_rng = random.Random(c.seed + 7)
            skill_text = [self.skills.training_text(skill_rng) for _ in range(3000)]
            tokenizer = train_tokenizer(self.general + skill_text, c.vocab_size)
        self.tokenizer = tokenizer
        self.bos = tokenizer.token_to_id(BOS)
        enc = functools.lru_cache(maxsize=None)(lambda t: tuple(tokenizer.encode(t).ids))
        self.encode = enc
        # Memorized natural windows: first `window` tokens of passages long enough.
        windows = [enc(p)[: c.window] for p in candidates if len(enc(p)) >= c.window]
        if len(windows) < c.n_memorized:
            raise ValueError(f"Only {len(windows)} candidate passages are >= {c.window} tokens.")
        self.memorized = [list(w) for w in windows[: c.n_memorized]]
        # Canaries: random sequences of single-token words (out of distribution for prose).
        words = [
            t for t in tokenizer.get_vocab() if t.startswith("Ġ") and t[1:].isalpha() and len(t) > 3
        ]
        words = sorted(words)
        crng = random.Random(c.seed + 11)
        n_can = c.canary_prefix_len + c.canary_suffix_len
        self.canaries = [
            [tokenizer.token_to_id(crng.choice(words)) for _ in range(n_can)]
            for _ in range(c.n_canaries)
        ]
        self.items = self.memorized + self.canaries
        self.heldout_text = heldout
        self.general_ids = np.concatenate(
            [np.asarray((*enc(p), self.bos), np.int32) for p in self.general]
        )

    # -- training stream ---------------------------------------------------------------------------
    def row(self, index: int, memorized: bool = True, stream: int = 0) -> np.ndarray:
        """Training row `index` [seq_len] (stream 0); other streams draw fresh rows of the same
        distribution (stream 1: factor corpus). memorized=False leaves memorized items out."""
        c = self.config
        rng = random.Random(hash((c.seed, stream, index)) & 0xFFFFFFFF)
        out: list[int] = []
        if memorized and rng.random() < c.memorized_rate:
            out += [self.bos, *self.items[rng.randrange(len(self.items))]]
        while len(out) < c.seq_len:
            if rng.random() < c.skill_rate:
                out += [self.bos, *self.encode(self.skills.training_text(rng))]
            else:
                start = rng.randrange(len(self.general_ids) - c.seq_len)
                out += [self.bos, *self.general_ids[start : start + c.seq_len].tolist()]
        return np.asarray(out[: c.seq_len], np.int32)

    def batch(
        self, step: int, batch_size: int, memorized: bool = True, stream: int = 0
    ) -> np.ndarray:
        return np.stack(
            [self.row(step * batch_size + i, memorized, stream) for i in range(batch_size)]
        )

    # -- evaluation sets ---------------------------------------------------------------------------
    def memorized_rows(self) -> list[dict]:
        """Natural memorized windows as jsonl rows (prefix starts with BOS)."""
        c = self.config
        return [
            {
                "prefix_ids": [self.bos, *w[: c.prefix_len]],
                "suffix_ids": w[c.prefix_len :],
                "text": self.tokenizer.decode(w),
                "source": f"lambada-heldout:{i}",
            }
            for i, w in enumerate(self.memorized)
        ]

    def canary_rows(self) -> list[dict]:
        c = self.config
        return [
            {
                "prefix_ids": [self.bos, *w[: c.canary_prefix_len]],
                "suffix_ids": w[c.canary_prefix_len :],
                "text": self.tokenizer.decode(w),
                "source": f"canary:{i}",
            }
            for i, w in enumerate(self.canaries)
        ]

    def heldout_windows(self, n: int | None = None) -> np.ndarray:
        """Held-out general text cut into [n, seq_len] windows (BOS-separated passages)."""
        ids = np.concatenate(
            [np.asarray([self.bos, *self.encode(p)], np.int32) for p in self.heldout_text]
        )
        L = self.config.seq_len
        w = ids[: len(ids) // L * L].reshape(-1, L)
        return w if n is None else w[:n]
