"""K-FAC factor collection: one streaming pass over the data for every selected layer.

For each selected linear site with input a_t [d_in] and output gradient g_t = ∂L/∂s_t [d_out] at
position t (L = cross-entropy *summed* over the window's labelled positions), a factor run
accumulates

    Σ_t a_t a_tᵀ  per input group (sites reading the same input share it: q/k/v, gate/up)
    Σ_t g_t g_tᵀ  per site
    n_tokens      the exact number of positions summed (Python int)

over every position with a label, i.e. every position the model's `loss_targets` gives weight 1 (the
last position of each window is excluded for a causal LM; only the CLS position counts for a ViT
classifier): the weights mask both a_t and g_t and n_tokens counts them. Means are formed only when
reading (`load_factors`). Labels are sampled from the model's own softmax (`sampled`, the
Monte-Carlo true Fisher; seeded) or the gold next tokens (`empirical`). docs/design.md §2.2–§2.4.

Modules, one role each:

  config           `CollectConfig` (labels, seed, batch size, accumulation dtype, reduce mode)
  sites            which linear sites: `select_sites` (ids or layers × projections), input groups
  head_loss        the head's cotangent in vocabulary chunks, sampled or gold labels
  capture          one forward/backward giving every selected site's inputs and output gradients
  accumulate       the jitted step: masked outer products into the sums (reduce modes, schemes)
  batches          global batches from a data source, padded, each process reading its own rows
  reduce           the reduce mode chosen from the compiled step's memory
  run              `collect`: the resumable, locked pass writing a factor run (extendable with
                   more windows of the same corpus; `time_budget_s` stops it resumably)
  merge            `merge_factor_runs`: one factor run from several (exact sums and counts)
  store            the factor run on disk (Orbax sums + metadata.json) and `load_factors`
  kfac_jax_engine  kfac-jax 0.0.8 as a second collection engine, and importing its state

The data source is token `Windows` (batch = token ids [B, L]) or `LabelledExamples` (batch =
(inputs [B, ...], labels [B]), e.g. images for `models.VisionModel`): both expose `arrays` (cut into
batches along the leading axis and sharded over the data axes the same way) and `as_batch`.

The backward pass starts at the output head and stops at the lowest selected site: only
perturbations of selected outputs are differentiated and no parameter gradient is formed.
"""

from kfac_mem.collection.config import CollectConfig as CollectConfig
from kfac_mem.collection.merge import merge_factor_runs as merge_factor_runs
from kfac_mem.collection.run import collect as collect
from kfac_mem.collection.sites import input_groups as input_groups
from kfac_mem.collection.sites import select_sites as select_sites
from kfac_mem.collection.store import Factor as Factor
from kfac_mem.collection.store import FactorRun as FactorRun
from kfac_mem.collection.store import load_factors as load_factors

__all__ = [
    "CollectConfig",
    "Factor",
    "FactorRun",
    "collect",
    "input_groups",
    "load_factors",
    "merge_factor_runs",
    "select_sites",
]
