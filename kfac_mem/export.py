"""`export_model`: any loaded model -> an HF checkpoint directory that transformers loads.

One writer of HF exports for every command (`kfac-mem export`; `kfac-mem edit`, `baseline` and
`sweep` with `kfac-mem ... --export-hf`): the weights are checked finite, the directory is claimed as an
HF export (`kfac_mem.rundir`, kind "hf-export"), and it receives `config.json` +
`model.safetensors` (`models.export_hf`, or `models.export_vit_hf` for a ViT classifier),
`tokenizer.json` when the model has a tokenizer, and `provenance.json` (docs/design.md §5.5).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from kfac_mem.atomic import write_json_atomic
from kfac_mem.rundir import claim
from kfac_mem.validation import check_finite_tree

__all__ = ["PROVENANCE", "export_model"]

PROVENANCE = "provenance.json"


def export_model(
    model,
    hf_dir: str,
    *,
    dtype: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    inputs: Mapping[str, str | None] | None = None,
) -> str:
    """Write `model` into `hf_dir` as an HF checkpoint directory (docs/design.md §5.5).

    Args:
      model: a loaded `LanguageModel` (OLMo-2 / Llama) or `VisionModel` (ViT classifier).
      hf_dir: the output directory: new, empty, or an earlier HF export (replaced only with
        `overwrite`); never a user's directory or one of `inputs`.
      dtype: storage dtype of the exported tensors (e.g. "bfloat16"); default the parameters'.
      metadata: what the model's own checkpoint records about it (e.g. {"edit": ...} for an
        edited model), copied into provenance.json.
      overwrite: replace an existing HF export in `hf_dir`.
      inputs: argument name -> path of the command's inputs (the export may not overlap them).

    `provenance.json` holds {"source": where the weights came from (path or preset),
    "fingerprint": the weights' fingerprint (§5.1), "metadata"}; `evaluate` follows it to find
    the bundled texts a model was tuned on. Returns the real path of `hf_dir`.
    """
    from models import VisionModel, export_hf, export_vit_hf

    check_finite_tree(model.params, f"the weights to export to {hf_dir}")
    with claim(
        hf_dir,
        "hf-export",
        inputs=inputs,
        overwrite=overwrite,
        replace_needs_overwrite=True,
        arg="hf_dir",
    ) as held:
        if isinstance(model, VisionModel):
            export_vit_hf(model, held.path, dtype=dtype)
        else:
            export_hf(model.config, model.params, held.path, tokenizer=model.tokenizer, dtype=dtype)
        write_json_atomic(
            os.path.join(held.path, PROVENANCE),
            {
                "source": getattr(model, "source", None),
                "fingerprint": model.fingerprint(),
                "metadata": dict(metadata or {}),
            },
        )
        return held.path
