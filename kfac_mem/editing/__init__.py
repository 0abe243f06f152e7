"""The curvature-mass weight edit (docs/design.md §2.6) and its controls.

selection    which components to keep: ρ-mass staircases, percentile bands, full-Π (EK-FAC)
reconstruct  W' = U_G((U_Gᵀ W U_A) ⊙ M)U_Aᵀ, two-arm staircase products
controls     SVD truncation, Haar-random bases
plan         `EditPlan` from --layers-json / a JSON or YAML file / short flags
apply        edit a params tree and report per matrix
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
    "Selection",
    "Spectrum",
    "apply_plan",
    "edit_kernel",
    "edit_weight",
    "parse_plan",
    "plan_from_file",
    "plan_from_flags",
    "plan_from_json",
    "select_band",
    "select_mass",
]
