"""The curvature-mass weight edit (docs/design.md §2.6) and its controls.

selection    which components to keep: ρ-mass staircases, percentile bands, full-Π (EK-FAC)
reconstruct  W' = U_G((U_Gᵀ W U_A) ⊙ M)U_Aᵀ, two-arm staircase products
controls     SVD truncation, Haar-random bases
plan         `EditPlan` from a JSON string, a JSON or YAML file, or layers x projections x value
apply        edit a params tree and report per matrix
record       `edit_model`: the edit and its record (the one edited-model schema)
report       the printed table
"""

from kfac_mem.editing.apply import EditOptions, apply_plan, edit_kernel, edit_weight
from kfac_mem.editing.plan import (
    METHODS,
    EditPlan,
    parse_plan,
    plan_from_file,
    plan_from_flags,
    plan_from_json,
)
from kfac_mem.editing.record import EditedModel, edit_model, write_edited_model
from kfac_mem.editing.selection import (
    NO_EDIT_RHO,
    Selection,
    Spectrum,
    select_band,
    select_mass,
)

__all__ = [
    "METHODS",
    "NO_EDIT_RHO",
    "EditOptions",
    "EditPlan",
    "EditedModel",
    "Selection",
    "Spectrum",
    "apply_plan",
    "edit_kernel",
    "edit_model",
    "edit_weight",
    "parse_plan",
    "plan_from_file",
    "plan_from_flags",
    "plan_from_json",
    "select_band",
    "select_mass",
    "write_edited_model",
]
