"""Baselines the curvature edit is compared with, and the paper's comparison (Table 1, Table 6).

bsn       BalancedSubnet: a learned per-matrix binary mask over MLP weights (Sakarvadia et al.)
matching  search a method's strength knob until held-out perplexity matches a target
stress    positional perturbation of the prefix and relearning on clean text
compare   K-FAC, SVD and BSN at matched perplexity: recitation, perplexity, nDCG@10, time
table     the Markdown tables of a comparison
"""

from kfac_mem.baselines.bsn import BSNConfig, BSNResult, train_bsn
from kfac_mem.baselines.compare import CompareOptions, CompareSets, compare
from kfac_mem.baselines.matching import MatchResult, match_perplexity
from kfac_mem.baselines.stress import StressOptions, positional_perturbation, relearn

__all__ = [
    "BSNConfig",
    "BSNResult",
    "CompareOptions",
    "CompareSets",
    "MatchResult",
    "StressOptions",
    "compare",
    "match_perplexity",
    "positional_perturbation",
    "relearn",
    "train_bsn",
]
