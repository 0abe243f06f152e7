"""Settings of an analyzer run (`kfac_mem.analysis.analyze`, `kfac-mem analyze`)."""

from __future__ import annotations

import dataclasses
import math

from kfac_mem.analysis.ablation import SCOPES
from kfac_mem.analysis.bands import BANDS, check_bands
from kfac_mem.analysis.sets import POSITIONS
from kfac_mem.collection.head_loss import MODES


@dataclasses.dataclass(frozen=True)
class AnalyzeOptions:
    """What the analyzer measures and how.

    Attributes:
      mode: labels of the per-example gradients: "sampled" (drawn from the model's softmax, the
        paper's true-Fisher setting; seeded) or "empirical" (gold next tokens).
      seed: seed of the sampled labels (folded with the set and batch index) and of the ablation's
        random-basis control.
      batch_size: examples per step (a multiple of the mesh's data-parallel size).
      top_k: top directions per example (sharpness = their share of the example's curvature).
      rhos: curvature-mass fractions whose cut through the population spectrum is reported.
      bands: (name, lo %, hi %) bands of components ranked by descending Π = λ_i μ_j.
      positions: which positions' next-token loss counts: "all" or "suffix" (window sets only).
      seq_len: window length for text sets (default: the first window set's length, else 128).
      max_examples: use at most this many examples of each set.
      row_chunk: rows of Γ̃_n formed at once (default: as many as fit `chunk_bytes` per device).
      chunk_bytes: per-device budget for one block of Γ̃ rows.
      vocab_chunk: vocabulary chunk of the head's loss gradient.
      svd: also measure activation band strengths in the SVD basis of each weight.
      ekfac: compute EK-FAC corrected eigenvalues and save them under the output directory
        (`EigenRun.use_corrected` reads them; `kfac-mem edit --eigenvalues ekfac --ekfac DIR`).
      ekfac_sets: sets the EK-FAC eigenvalues are averaged over (default: the clean set if given,
        else every set).
      ablation: "joint" (remove a band from all analyzed layers at once), "per_layer" or "none".
      ablation_control: also remove as many components in random orthogonal bases.
      eval_batch_size: windows per forward when measuring losses.
      figures: write PNG figures.
      overwrite: replace an earlier analyzer run in the output directory.
      progress: show a progress bar.
    """

    mode: str = "sampled"
    seed: int = 0
    batch_size: int = 8
    top_k: int = 32
    rhos: tuple[float, ...] = (0.6, 0.8)
    bands: tuple[tuple[str, float, float], ...] = BANDS
    positions: str = "all"
    seq_len: int | None = None
    max_examples: int | None = None
    row_chunk: int | None = None
    chunk_bytes: int = 256 << 20
    vocab_chunk: int = 8192
    svd: bool = True
    ekfac: bool = True
    ekfac_sets: tuple[str, ...] | None = None
    ablation: str = "joint"
    ablation_control: bool = True
    eval_batch_size: int = 8
    figures: bool = True
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {self.mode!r}.")
        if self.positions not in POSITIONS:
            raise ValueError(f"`positions` must be one of {POSITIONS}, got {self.positions!r}.")
        if self.ablation not in SCOPES:
            raise ValueError(f"`ablation` must be one of {SCOPES}, got {self.ablation!r}.")
        for name in ("batch_size", "top_k", "chunk_bytes", "vocab_chunk", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        for name in ("seq_len", "max_examples", "row_chunk"):
            v = getattr(self, name)
            if v is not None and int(v) < (2 if name == "seq_len" else 1):
                raise ValueError(f"`{name}` must be positive (seq_len >= 2), got {v}.")
        for rho in self.rhos:
            if not (isinstance(rho, int | float) and math.isfinite(rho) and 0 < rho <= 1):
                raise ValueError(f"`rhos` values must lie in (0, 1], got {rho!r}.")
        object.__setattr__(self, "bands", check_bands(self.bands))
        object.__setattr__(self, "rhos", tuple(float(r) for r in self.rhos))
        if self.ekfac_sets is not None:
            object.__setattr__(self, "ekfac_sets", tuple(self.ekfac_sets))
