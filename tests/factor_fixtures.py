"""Factor runs written directly in the collector's on-disk format (for eigen/edit tests).

`write_factor_run` stores random SPD sums (A per input group, G per site) with `save_state` and a
metadata.json exactly as `kfac_mem.collection` writes them, so tests need no collection pass.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from kfac_mem.atomic import write_json_atomic
from kfac_mem.collection.store import (
    FORMAT,
    METADATA,
    FactorSums,
    checkpoint_manager,
    save_state,
    site_to_dict,
)
from models.sites import LinearSite


def random_spd(
    d: int, rng: np.random.Generator, decay: float = 1.0, degenerate: bool = False
) -> np.ndarray:
    """A symmetric positive semi-definite [d, d] matrix with a power-law spectrum ~ i^-decay.

    The eigenvalues are i^-decay times a random factor in [0.8, 1.25], so no two products λ_i μ_j
    of two such spectra are mathematically equal (an exact power law has ties such as
    2^-1.5·16^-1 = 8^-1.5·2^-1, which an edit at that ρ would break by the last bit). With
    `degenerate`, eigenvalues come in repeated blocks (exact ties) and a few are 0.
    """
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    vals = np.arange(1, d + 1, dtype=np.float64) ** -decay
    if not degenerate:
        vals = np.sort(vals * np.exp(rng.uniform(np.log(0.8), np.log(1.25), d)))[::-1]
    if degenerate:
        vals = np.repeat(vals[: -(-d // 4)], 4)[:d]
        vals[-2:] = 0.0
    return (q * vals) @ q.T


def write_factor_run(
    directory: str,
    model,
    sites: Sequence[LinearSite] | None = None,
    n_tokens: int = 1000,
    seed: int = 0,
    degenerate: bool = False,
    corrupt: str | None = None,
    shapes: dict[str, int] | None = None,
) -> str:
    """Write a complete factor run for `sites` (default: all of `model`'s linear sites).

    Args:
      directory: run directory (created).
      model: a `models.LanguageModel` (fingerprint, config and sites are recorded).
      n_tokens: token count; sums are n_tokens times the SPD means.
      degenerate: tied eigenvalues in every factor.
      corrupt: a factor name (input group or site id) whose sum gets a NaN.
      shapes: override the dimension of named factors (to simulate another model).
    """
    rng = np.random.default_rng(seed)
    sites = list(model.linear_sites() if sites is None else sites)
    shapes = shapes or {}
    a_sums, g_sums = {}, {}
    for s in sites:
        if s.input_group not in a_sums:
            d = shapes.get(s.input_group, s.d_in)
            a_sums[s.input_group] = n_tokens * random_spd(d, rng, 1.0, degenerate)
        d = shapes.get(s.id, s.d_out)
        g_sums[s.id] = n_tokens * random_spd(d, rng, 1.5, degenerate)
    for table in (a_sums, g_sums):
        if corrupt in table:
            table[corrupt] = table[corrupt].copy()
            table[corrupt][0, 1] = np.nan
    sums = FactorSums(
        {k: v.astype(np.float32) for k, v in a_sums.items()},
        {k: v.astype(np.float32) for k, v in g_sums.items()},
    )
    os.makedirs(directory, exist_ok=True)
    with checkpoint_manager(directory) as manager:
        save_state(
            manager,
            0,
            sums,
            {"n_tokens": n_tokens, "windows_done": 1, "steps": 1, "complete": True},
        )
    write_json_atomic(
        os.path.join(directory, METADATA),
        {
            "format": FORMAT,
            "sites": [site_to_dict(s) for s in sites],
            "mode": "sampled",
            "model": {
                "fingerprint": model.fingerprint(),
                "source": model.source,
                "config": model.config.to_dict(),
            },
            "corpus": {"name": "synthetic"},
            "seed": seed,
            "accumulate_dtype": "float32",
        },
    )
    return directory
