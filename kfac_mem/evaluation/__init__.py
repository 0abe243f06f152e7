"""Evaluation suite: memorization mining and recitation, perplexity, nDCG@k and task groups.

Library entry points (each takes an optional `params` override, so edited weights are evaluated
without reloading the model):

    recitation(model, rows, params=None, batch_size=32)
    perplexity(model, windows, params=None, batch_size=8)
    ndcg_at_k(model, windows, baseline=None, params=None, baseline_params=None, k=10)
    evaluate_tasks(model, tasks="all", limit=None, params=None)
    mine(model, sources, MiningConfig(...), params=None)
    run_evaluation(model, baseline=..., memorized=..., texts=..., suites=..., out_dir=...)
    plan_evaluation(model, ...)      every requested suite's inputs, checked before any runs
    tuned_texts(model.source)        bundled texts a model's provenance says it was tuned on
"""

from kfac_mem.evaluation.io import read_memorized as read_memorized
from kfac_mem.evaluation.levenshtein import levenshtein as levenshtein
from kfac_mem.evaluation.levenshtein import recitation_match as recitation_match
from kfac_mem.evaluation.mining import MiningConfig as MiningConfig
from kfac_mem.evaluation.mining import mine as mine
from kfac_mem.evaluation.mining import mine_windows as mine_windows
from kfac_mem.evaluation.ndcg import ndcg_at_k as ndcg_at_k
from kfac_mem.evaluation.ndcg import ndcg_from_topk as ndcg_from_topk
from kfac_mem.evaluation.perplexity import perplexity as perplexity
from kfac_mem.evaluation.provenance import tuned_texts as tuned_texts
from kfac_mem.evaluation.recitation import recitation as recitation
from kfac_mem.evaluation.runner import format_table as format_table
from kfac_mem.evaluation.runner import plan_evaluation as plan_evaluation
from kfac_mem.evaluation.runner import run_evaluation as run_evaluation
from kfac_mem.evaluation.task_eval import evaluate_tasks as evaluate_tasks
from kfac_mem.evaluation.task_eval import score_continuations as score_continuations
from kfac_mem.evaluation.task_eval import with_retention as with_retention
from kfac_mem.evaluation.tasks import GROUPS as GROUPS
from kfac_mem.evaluation.tasks import TASKS as TASKS
from kfac_mem.evaluation.tasks import TaskSpec as TaskSpec
from kfac_mem.evaluation.text import windows_from_sources as windows_from_sources

__all__ = [
    "GROUPS",
    "TASKS",
    "MiningConfig",
    "TaskSpec",
    "evaluate_tasks",
    "format_table",
    "levenshtein",
    "mine",
    "mine_windows",
    "ndcg_at_k",
    "ndcg_from_topk",
    "perplexity",
    "plan_evaluation",
    "read_memorized",
    "recitation",
    "recitation_match",
    "run_evaluation",
    "score_continuations",
    "tuned_texts",
    "windows_from_sources",
    "with_retention",
]
