"""The experiment harness: grid -> edit -> measure -> choose (one rule) -> matched control.

The LM demo, the SmolLM2 preset, the vision demo, `compare` and `kfac-mem sweep`
(`run_memorization_sweep`) declare their grid, measure and rule and run them here (`sweep`,
`ChoiceRule.choose`, `matched_control`), and repeat themselves over seeds here (`run_seeds`);
`memorization_measure` is the LM experiments' shared measure (recitation of memorized sets,
perplexity ratio to the unedited model).
"""

from kfac_mem.experiments.grid import EditCell, edit_grid
from kfac_mem.experiments.measures import memorization_measure, perplexity_ratio
from kfac_mem.experiments.memorization import MemorizationSweep, run_memorization_sweep
from kfac_mem.experiments.rule import ChoiceRule, Limit, metric
from kfac_mem.experiments.seeds import parse_seeds, run_seeds
from kfac_mem.experiments.stages import Stages
from kfac_mem.experiments.sweep import edited_params, matched_control, sweep

__all__ = [
    "ChoiceRule",
    "EditCell",
    "Limit",
    "MemorizationSweep",
    "Stages",
    "edit_grid",
    "edited_params",
    "matched_control",
    "memorization_measure",
    "metric",
    "parse_seeds",
    "perplexity_ratio",
    "run_memorization_sweep",
    "run_seeds",
    "sweep",
]
