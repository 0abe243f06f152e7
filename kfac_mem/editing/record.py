"""`edit_model`: edit a model by a plan and describe the edit in the one schema every edited model
carries (the CLI's `edit`, the demos and the harness all write it).

The record (`report.json` beside the edited model; its provenance part is also the model's
metadata under "edit"):

    {"model": {"source", "fingerprint", "edited_fingerprint"},
     "eigen": {"path", "precision", "factor_run"} | None,
     "method", "eigenvalues", "ekfac": {"path", "provenance"} | None, "precision", "seed",
     "plan": EditPlan.to_json(), "warning": str | None,
     "matrices": [per-matrix rows of `apply_plan`]}
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from kfac_mem.editing.apply import EditOptions, apply_plan
from kfac_mem.editing.plan import EditPlan

__all__ = ["EditedModel", "edit_model", "write_edited_model"]

# The provenance keys of the record that go into the edited model's own metadata.
METADATA_KEYS = ("method", "eigenvalues", "ekfac", "plan", "eigen")


@dataclasses.dataclass(frozen=True)
class EditedModel:
    """The edited model (same architecture, new parameters) and its edit record."""

    model: Any
    record: dict[str, Any]

    @property
    def params(self):
        return self.model.params

    @property
    def metadata(self) -> dict[str, Any]:
        """What `models.save_model` stores with the edited weights."""
        return {"edit": {k: self.record[k] for k in METADATA_KEYS}}


def edit_model(
    model,
    eigen,
    plan: EditPlan,
    options: EditOptions | None = None,
    ekfac_provenance: dict[str, Any] | None = None,
) -> EditedModel:
    """Apply `plan` to `model` (`kfac_mem.editing.apply_plan`) and build the edit record.

    Args:
      model: the unedited model (a placed `LanguageModel` or `VisionModel`).
      eigen: its eigen run (`load_eigen`); None only for method "svd".
      plan: which matrices, with which ρ / drop fraction / band.
      options: method, eigenvalues, precision, seed, rank diagnostics (default `EditOptions()`).
      ekfac_provenance: what `EigenRun.use_corrected` returned, when `options.eigenvalues` is
        "ekfac" (recorded with the edit).

    The record's "warning" is set when the eigen run was collected on a different model than
    `model` (factors should come from the unedited model being edited).
    """
    options = EditOptions() if options is None else options
    if options.method != "svd" and eigen is None:
        raise ValueError(
            f"`eigen` is required for method {options.method!r} (only svd needs none)."
        )
    fingerprint = model.fingerprint()
    warning = None
    if eigen is not None and eigen.model_fingerprint not in (None, fingerprint):
        warning = (
            f"the eigen run's factors were collected on a model with fingerprint "
            f"{eigen.model_fingerprint}, but the edited model has {fingerprint}; factors should "
            f"come from the unedited model being edited."
        )
    params, rows = apply_plan(model.params, model.linear_sites(), plan, eigen, options)
    edited = model.with_params(params)
    record = {
        "model": {
            "source": getattr(model, "source", None),
            "fingerprint": fingerprint,
            "edited_fingerprint": edited.fingerprint(),
        },
        "eigen": None
        if eigen is None
        else {
            "path": eigen.directory,
            "precision": eigen.precision,
            "factor_run": eigen.factor_run,
        },
        "method": options.method,
        "eigenvalues": options.eigenvalues,
        "ekfac": None
        if ekfac_provenance is None
        else {"path": eigen.ekfac_directory, "provenance": ekfac_provenance},
        "precision": options.precision,
        "seed": options.seed,
        "plan": plan.to_json(),
        "warning": warning,
        "matrices": rows,
    }
    return EditedModel(edited, record)


def write_edited_model(result: EditedModel, out_dir: str) -> str:
    """Save the edited model (Orbax, `models.save_model`, with `result.metadata`) and its record
    (`report.json`) into `out_dir`, a directory the caller owns (a stage's own subdirectory);
    the weights are checked finite first. Returns `out_dir`."""
    from kfac_mem.atomic import write_json_atomic
    from kfac_mem.validation import check_finite_tree
    from models import save_model

    check_finite_tree(result.params, f"the edited weights for {out_dir}")
    save_model(result.model, out_dir, metadata=result.metadata, overwrite=True)
    write_json_atomic(os.path.join(out_dir, "report.json"), result.record)
    return out_dir
