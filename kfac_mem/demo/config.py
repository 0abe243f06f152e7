"""`DemoConfig`: everything the LM demo does, validated on construction, with its named presets
(`DemoConfig.default()`, the embedded default with the committed model; `DemoConfig.tiny()`, every
stage at toy size for CI). `kfac_mem.demo.presets.DEMO_PRESETS` registers them by name."""

from __future__ import annotations

import dataclasses
from typing import Any

from kfac_mem.collection.head_loss import MODES
from kfac_mem.demo.mixture import MixtureConfig
from kfac_mem.demo.skills import GROUPS
from kfac_mem.experiments import ChoiceRule, Limit
from kfac_mem.validation import check_fields


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Everything the demo does, with the sizes of each stage.

    Training (only with `retrain` or when no committed model matches): `model_preset` trained for
    `train_steps` x `train_batch` rows of the mixture. Factors: `factor_windows` fresh rows of the
    mixture (memorized items excluded unless `factor_include_memorized`), labels sampled.
    Sweep: every (layers, projections, ρ) in the grid is scored on the *selection* splits
    (memorized train split, first half of held-out text and skill items); the chosen edit is then
    reported on the *report* splits (memorized validation split, canaries, second halves).
    Targets: the choice rule's limits (`max_ppl_increase`, `min_retention` of every
    `protected_groups` group) and the recitation the report checks before (at least
    `min_recitation_before`) and after (at most `max_recitation_after`) the edit.
    Seeds: `seed` drives every seed-dependent stage (`demo/seeds.py` repeats the demo over seeds);
    `split_seed` and the data (`mixture.seed`, which the committed model was trained on) do not
    change with it, so every seed is scored on the same held-out windows.
    """

    name: str = "default"
    mixture: MixtureConfig = MixtureConfig()
    model_preset: str = "demo-olmo2"
    model_overrides: tuple[tuple[str, Any], ...] = ()  # DecoderConfig fields replaced in the preset
    asset: str | None = "demo-olmo2"  # committed model: name under demo/assets/, or a path
    seed: int = 0  # sampled labels, random-basis control, analyzer; model init when trained here
    split_seed: int = 0  # memorized train/validation split (kept fixed across `--seeds`)
    train_steps: int = 1000
    train_batch: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 60
    weight_decay: float = 0.1
    factor_windows: int = 1024
    factor_batch: int = 16
    factor_include_memorized: bool = False
    factor_mode: str = "sampled"
    layer_sets: tuple[tuple[int, ...], ...] = ((3,), (2, 3), (1, 2, 3))
    projection_sets: tuple[tuple[str, ...], ...] = (("gate", "up"), ("gate", "up", "down"))
    rhos: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9)
    svd_drops: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    max_ppl_increase: float = 0.30
    min_retention: float = 0.90
    protected_groups: tuple[str, ...] = ("open_book", "logic")
    min_recitation_before: float = 0.90  # strict recitation of held-out memorized windows
    max_recitation_after: float = 0.10
    eval_text_windows: int = 128
    ndcg_windows: int = 32
    eval_items: int = 100  # per skill group and split
    analysis_examples: int = 48  # per example set
    analysis: bool = True  # run the analyzer stage (tests that check other stages switch it off)

    def __post_init__(self):
        check_fields(
            self,
            at_least_one=(
                "train_steps",
                "train_batch",
                "factor_windows",
                "factor_batch",
                "eval_text_windows",
                "ndcg_windows",
                "eval_items",
                "analysis_examples",
            ),
            positive=("learning_rate",),
            non_negative=("warmup_steps", "weight_decay", "max_ppl_increase"),
            fractions=("min_retention", "min_recitation_before", "max_recitation_after"),
            rhos=("rhos",),
            drops=("svd_drops",),
            choices={"factor_mode": MODES},
        )
        for name in ("layer_sets", "projection_sets", "rhos", "svd_drops"):
            if not getattr(self, name) or not all(getattr(self, name)):
                raise ValueError(f"`{name}` must be non-empty (and so must each of its sets).")
        unknown = [g for g in self.protected_groups if g not in GROUPS]
        if unknown:
            raise ValueError(f"`protected_groups` {unknown} are not skill groups {GROUPS}.")

    def choice_rule(self) -> ChoiceRule:
        """The sweep's choice: lowest selection-split recitation (then perplexity) among settings
        within the perplexity limit and keeping every protected skill group; when none is, the one
        closest to the limits."""
        return ChoiceRule(
            objective=("strict_memorized_train", "ppl_ratio"),
            limits=(
                Limit("ppl_ratio", hi=1 + self.max_ppl_increase),
                *(Limit(f"retention.{g}", lo=self.min_retention) for g in self.protected_groups),
            ),
        )

    # --- named presets (registered in kfac_mem.demo.presets) -------------------------------------

    @classmethod
    def default(cls) -> DemoConfig:
        """The embedded default: the committed 4.5M-parameter OLMo-2 (`demo-olmo2`)."""
        return cls()

    @classmethod
    def tiny(cls) -> DemoConfig:
        """Every stage on toy sizes (a few minutes on 2 CPU cores, compilation included)."""
        return cls(
            name="tiny",
            mixture=MixtureConfig(
                vocab_size=320,
                n_memorized=8,
                n_canaries=4,
                prefix_len=8,
                suffix_len=8,
                canary_prefix_len=6,
                canary_suffix_len=6,
                seq_len=32,
                memorized_rate=0.6,
                n_heldout_passages=40,
                n_capitals=12,
            ),
            model_preset="tiny-olmo2",
            asset=None,
            train_steps=150,
            train_batch=16,
            learning_rate=5e-3,
            warmup_steps=10,
            factor_windows=64,
            layer_sets=((1,), (0, 1)),
            projection_sets=(("gate", "up"),),
            rhos=(0.7, 0.9),
            svd_drops=(0.5,),
            eval_text_windows=16,
            ndcg_windows=8,
            eval_items=12,
            analysis_examples=8,
        )
