"""The experiment harness: grid -> edit -> measure -> choose (one rule) -> matched control.

The LM demo, the SmolLM2 preset, the vision demo and `compare` declare their grid, measure and
rule and run them here (`sweep`, `ChoiceRule.choose`, `matched_control`).
"""

from kfac_mem.experiments.grid import EditCell, edit_grid
from kfac_mem.experiments.rule import ChoiceRule, Limit, metric
from kfac_mem.experiments.stages import Stages
from kfac_mem.experiments.sweep import edited_params, matched_control, sweep

__all__ = [
    "ChoiceRule",
    "EditCell",
    "Limit",
    "Stages",
    "edit_grid",
    "edited_params",
    "matched_control",
    "metric",
    "sweep",
]
