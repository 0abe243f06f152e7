"""Settings of `kfac_mem.audit.run_audit`: which attacks run and with what budget."""

from __future__ import annotations

import dataclasses

ATTACKS = ("sampling", "beam", "prefix", "membership", "relearning")


@dataclasses.dataclass(frozen=True)
class AuditOptions:
    """Every knob of the audit (defaults: the issue's protocol).

    Attributes:
      attacks: subset of `ATTACKS` to run.
      samples: k, sampled continuations per prefix and temperature.
      sample_curve: the k' ≤ k at which the extraction rate is also reported (first k' samples).
      temperatures: sampling temperatures (> 0).
      top_k, top_p: sampling filters (0 and 1.0: off).
      beam_width: beams per prefix (also run on the baseline for the rank comparison).
      prefix_lengths: shorter prompts made of the last n prefix tokens (n < prefix length).
      shifts, shift_modes: `kfac_mem.baselines.stress` shifts (drop: the first t prefix tokens
        removed; prepend: t held-out clean tokens put before the prefix).
      dropout: probabilities of deleting each prefix token (one seeded draw per rate and row).
      min_k: fraction of lowest-probability tokens averaged by the min-k% membership score.
      relearn_steps: cumulative fine-tuning checkpoints (steps) at which recitation is measured.
      relearn_learning_rate, relearn_batch_size: AdamW peak rate and rows per step.
      relearn_fraction: share of each memorized set fine-tuned on in the memorized-subset
        condition (the rest is measured).
      batch_size: decoder rows per generation batch (sampling and prefix attacks).
      beam_batch: prompts per beam-search batch (beam_batch × beam_width decoder rows).
      seed: every random choice (samples, dropout, relearning batches and subset, bootstrap).
      progress: show progress bars on stderr.
    """

    attacks: tuple[str, ...] = ATTACKS
    samples: int = 32
    sample_curve: tuple[int, ...] = (1, 4, 8, 16, 32)
    temperatures: tuple[float, ...] = (0.7, 1.0)
    top_k: int = 0
    top_p: float = 1.0
    beam_width: int = 8
    prefix_lengths: tuple[int, ...] = (8, 16, 32)
    shifts: tuple[int, ...] = (1, 2, 4, 8)
    shift_modes: tuple[str, ...] = ("drop", "prepend")
    dropout: tuple[float, ...] = (0.1, 0.25)
    min_k: float = 0.2
    relearn_steps: tuple[int, ...] = (10, 25, 50)
    relearn_learning_rate: float = 1e-4
    relearn_batch_size: int = 8
    relearn_fraction: float = 0.25
    batch_size: int = 64
    beam_batch: int = 8
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        bad = sorted(set(self.attacks) - set(ATTACKS))
        if bad or not self.attacks:
            raise ValueError(f"`attacks` must be a non-empty subset of {ATTACKS}, got {bad}.")
        if self.samples < 1:
            raise ValueError(f"`samples` must be >= 1, got {self.samples}.")
        if any(k < 1 or k > self.samples for k in self.sample_curve):
            raise ValueError(
                f"`sample_curve` values must lie in 1..samples={self.samples}, "
                f"got {self.sample_curve}; raise `samples` or drop them."
            )
        if not self.temperatures or any(t <= 0 for t in self.temperatures):
            raise ValueError(f"`temperatures` must be > 0, got {self.temperatures}.")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(
                f"Need `top_k` >= 0 and 0 < `top_p` <= 1, got {self.top_k}, {self.top_p}."
            )
        if self.beam_width < 1:
            raise ValueError(f"`beam_width` must be >= 1, got {self.beam_width}.")
        if any(n < 1 for n in self.prefix_lengths) or any(t < 1 for t in self.shifts):
            raise ValueError("`prefix_lengths` and `shifts` must be >= 1.")
        if any(m not in ("drop", "prepend") for m in self.shift_modes):
            raise ValueError(f"`shift_modes` must be drop and/or prepend, got {self.shift_modes}.")
        if any(not 0 < p < 1 for p in self.dropout):
            raise ValueError(f"`dropout` rates must lie in (0, 1), got {self.dropout}.")
        if not 0 < self.min_k <= 1:
            raise ValueError(f"`min_k` must lie in (0, 1], got {self.min_k}.")
        if any(s < 1 for s in self.relearn_steps) or list(self.relearn_steps) != sorted(
            set(self.relearn_steps)
        ):
            raise ValueError(
                f"`relearn_steps` must be increasing checkpoints >= 1, got {self.relearn_steps}."
            )
        if not 0 < self.relearn_fraction < 1:
            raise ValueError(f"`relearn_fraction` must lie in (0, 1), got {self.relearn_fraction}.")
        if self.batch_size < 1 or self.beam_batch < 1 or self.relearn_batch_size < 1:
            raise ValueError("`batch_size`, `beam_batch` and `relearn_batch_size` must be >= 1.")

    @property
    def curve(self) -> tuple[int, ...]:
        """The sample counts of the extraction curve, always ending at `samples`."""
        return tuple(sorted({*self.sample_curve, self.samples}))
