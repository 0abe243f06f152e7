"""BalancedSubnet (BSN; Sakarvadia et al., "Mitigating Memorization in Language Models", ICLR 2025).

Edge-popup training of a binary mask over MLP weights, with every model parameter frozen:

* Scores S, one per masked weight, shaped like the matrix (Flax kernel [d_in, d_out]), initialised
  like torch's `kaiming_uniform_(a=√5)`: U(−1/√d_in, 1/√d_in).
* Forward: per matrix, the `floor(ratio · size)` weights with the smallest |S| are zeroed (ties
  broken by position, so the count is exact); the model runs with W ⊙ mask. Backward: straight
  through, d mask / d|S| = 1, so ∂L/∂S = (∂L/∂(W ⊙ mask)) ⊙ W ⊙ sign(S) (edge-popup).
* Loss per step: L = −(1 − w)·CE(forget) + w·CE(retain), each the mean next-token cross-entropy of a
  batch of windows (gradient ascent on memorized windows, descent on clean text).
* SGD with momentum 0.9 and weight decay 5e-4 (torch semantics: decay added to the gradient).
* At the end the mask is merged: W ← W ⊙ mask. The result is an ordinary parameter tree.

Which matrices: every layer by default. Original BSN masks the MLP's two matrices (GPT-2 c_fc and
c_proj, Pythia dense_h_to_4h and dense_4h_to_h); OLMo-2/Llama's gated MLP has three. The paper's
OLMo-2 port lists masking gate as an *option* of its search, so the default here is the two
analogues of the original, up_proj and down_proj; add gate with `projections=("gate", "up",
"down")`.

Defaults are the paper's best OLMo-2 setting (ratio 0.0015, loss weight 0.7, 5 epochs, lr 0.3); the
original code's defaults were w = 0.05 and lr 0.1. One epoch is one pass over the forget set; each
step pairs a batch of forget windows with an equally sized batch of retain windows (cycled).

Distribution: batches are split over the mesh's data axes; each score array carries its weight's
logical axes, so scores (and optimizer state) are sharded exactly like the weights they mask.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kfac_mem.collection.sites import select_sites
from kfac_mem.errors import InputError
from kfac_mem.evaluation.batching import place_batch, round_batch
from kfac_mem.evaluation.ragged import PAD, pad_right
from kfac_mem.training import next_token_loss
from models.language_model import abstract_params
from models.partitioning import logical_to_sharding
from models.sites import MLP_PROJECTIONS, LinearSite, get_path, set_path

Params = Any
Scores = dict[str, jax.Array]  # site id -> scores shaped like the kernel [d_in, d_out]
DEFAULT_PROJECTIONS = ("up", "down")


@dataclasses.dataclass(frozen=True)
class BSNConfig:
    """BalancedSubnet hyperparameters (defaults: the paper's best OLMo-2 run, see module doc).

    Attributes:
      ratio: fraction of each masked matrix pruned (floor(ratio · size) weights), in (0, 1).
      loss_weight: w in L = −(1 − w)·CE(forget) + w·CE(retain), in [0, 1].
      epochs: passes over the forget set. max_steps: stop earlier (None: no limit).
      learning_rate, momentum, weight_decay: SGD on the scores.
      batch_size: forget windows per step (the retain batch has as many rows); rounded up to a
        multiple of the data-parallel size, and down to the set size when the set is smaller.
      layers: layer indices to mask (None: all). projections: MLP projections to mask.
      seed: score initialisation and batch order.
      log_every: steps between history entries.
    """

    ratio: float = 0.0015
    loss_weight: float = 0.7
    epochs: int = 5
    learning_rate: float = 0.3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 32
    layers: tuple[int, ...] | None = None
    projections: tuple[str, ...] = DEFAULT_PROJECTIONS
    seed: int = 0
    max_steps: int | None = None
    log_every: int = 10

    def __post_init__(self):
        if not (math.isfinite(self.ratio) and 0 < self.ratio < 1):
            raise ValueError(f"BSN `ratio` must be in (0, 1) (fraction pruned), got {self.ratio}.")
        if not 0 <= self.loss_weight <= 1:
            raise ValueError(f"BSN `loss_weight` must be in [0, 1], got {self.loss_weight}.")
        for name in ("epochs", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"BSN `{name}` must be >= 1, got {getattr(self, name)}.")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"BSN `max_steps` must be >= 1 or None, got {self.max_steps}.")
        bad = [p for p in self.projections if p not in MLP_PROJECTIONS]
        if bad or not self.projections:
            raise ValueError(
                f"BSN masks MLP matrices: `projections` must be a non-empty subset of "
                f"{MLP_PROJECTIONS}, got {self.projections}."
            )


@dataclasses.dataclass
class BSNResult:
    """A finished BSN run: merged parameters, the learned scores, and what was done."""

    params: Params  # W ⊙ mask merged into every masked kernel
    scores: Scores
    sites: list[LinearSite]
    report: list[dict[str, Any]]  # per matrix: id, size, pruned, pruned_fraction, rel_delta_fro
    history: list[dict[str, float]]  # step, loss, ce_forget, ce_retain
    steps: int
    seconds: float
    config: BSNConfig


def prune_count(size: int, ratio: float, name: str = "matrix") -> int:
    """Weights pruned in a matrix of `size` entries: floor(ratio · size), which must be ≥ 1."""
    n = int(ratio * size)
    if n < 1:
        raise ValueError(
            f"{name}: ratio {ratio} of {size} weights prunes none; use ratio ≥ {1 / size:.3g}."
        )
    return n


def masked_sites(
    model, layers: Sequence[int] | None, projections: Sequence[str]
) -> list[LinearSite]:
    """The model's MLP sites in `layers` (None: all) × `projections`, in forward order."""
    return select_sites(model.linear_sites(), layers=layers, projections=projections)


@functools.lru_cache(maxsize=8)
def _logical_axes(config) -> Params:
    return abstract_params(config)[1]


def score_sharding(model, site: LinearSite):
    """The sharding of `site`'s kernel (same logical axes), or None without a mesh."""
    if model.mesh is None:
        return None
    axes = get_path(_logical_axes(model.config), site.kernel_path)
    return logical_to_sharding(
        axes, (site.d_in, site.d_out), model.mesh, model.rules or (), site.id
    )


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_scores(model, sites: tuple[LinearSite, ...], key: jax.Array) -> Scores:
    out = {}
    for i, site in enumerate(sites):
        bound = 1.0 / math.sqrt(site.d_in)
        s = jax.random.uniform(
            jax.random.fold_in(key, i), (site.d_in, site.d_out), jnp.float32, -bound, bound
        )
        sharding = score_sharding(model, site)
        out[site.id] = s if sharding is None else jax.lax.with_sharding_constraint(s, sharding)
    return out


def init_scores(model, sites: Sequence[LinearSite], seed: int) -> Scores:
    """Scores U(−1/√d_in, 1/√d_in) per site (torch kaiming_uniform_(a=√5)), sharded like W."""
    return _init_scores(model, tuple(sites), jax.random.key(seed))


def topk_mask(scores: jax.Array, n_pruned: jax.Array | int) -> jax.Array:
    """Binary mask (float32, scores' shape): 0 at the `n_pruned` entries of smallest |score|.

    Exactly `n_pruned` zeros even with tied scores (ties go to the lower flat index); `n_pruned`
    may be traced, so one compiled step serves every ratio.
    """
    flat = jnp.abs(scores).reshape(-1)
    order = jnp.argsort(flat, stable=True)
    rank = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    return (rank >= n_pruned).astype(jnp.float32).reshape(scores.shape)


def straight_through_mask(scores: jax.Array, n_pruned: jax.Array | int) -> jax.Array:
    """`topk_mask` in the forward pass; the gradient passes to |scores| unchanged (edge-popup)."""
    a = jnp.abs(scores)
    hard = jax.lax.stop_gradient(topk_mask(scores, n_pruned))
    return hard + (a - jax.lax.stop_gradient(a))  # a − a is exactly 0: the value is `hard`


def apply_masks(
    params: Params,
    sites: Sequence[LinearSite],
    scores: Scores,
    counts: Sequence[jax.Array | int],
    straight_through: bool = True,
) -> Params:
    """`params` with every site's kernel replaced by kernel ⊙ mask(scores)."""
    mask_fn = straight_through_mask if straight_through else topk_mask
    out = params
    for site, n in zip(sites, counts):
        kernel = get_path(params, site.kernel_path)
        mask = mask_fn(scores[site.id], n)
        out = set_path(out, site.kernel_path, kernel * mask.astype(kernel.dtype))
    return out


def bsn_loss(
    model,
    sites: Sequence[LinearSite],
    params: Params,
    scores: Scores,
    counts: Sequence[jax.Array],
    loss_weight: jax.Array,
    forget: jax.Array,
    retain: jax.Array,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """−(1 − w)·CE(forget) + w·CE(retain) with the straight-through masks; aux (CE_f, CE_r)."""
    masked = apply_masks(params, sites, scores, counts)
    ce_forget = next_token_loss(model, masked, forget)
    ce_retain = next_token_loss(model, masked, retain)
    return -(1.0 - loss_weight) * ce_forget + loss_weight * ce_retain, (ce_forget, ce_retain)


def _optimizer(learning_rate, momentum, weight_decay) -> optax.GradientTransformation:
    """torch.optim.SGD(lr, momentum, weight_decay): decay added to the gradient, then momentum."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum)
    )


# Hyperparameters live in the optimizer state (traced), so one compiled step serves every setting;
# the values given here are placeholders that `update` ignores in favour of the state's.
OPTIMIZER = optax.inject_hyperparams(_optimizer)
_UPDATE = OPTIMIZER(learning_rate=0.0, momentum=0.0, weight_decay=0.0).update


def state_shardings(model, sites: Sequence[LinearSite], tree: Any) -> Any:
    """Shardings for a scores-shaped tree or optimizer state: a leaf under a site id's key is
    sharded like that site's weight, every other leaf (counters, hyperparameters) replicated."""
    by_id = {s.id: s for s in sites}
    replicated = jax.sharding.NamedSharding(model.mesh, jax.sharding.PartitionSpec())

    def pick(path, _):
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        site = next((by_id[k] for k in reversed(keys) if k in by_id), None)
        return replicated if site is None else score_sharding(model, site)

    return jax.tree_util.tree_map_with_path(pick, tree)


def _constrain(model, sites, tree):
    if model.mesh is None:
        return tree
    return jax.tree.map(jax.lax.with_sharding_constraint, tree, state_shardings(model, sites, tree))


def init_state(model, sites: Sequence[LinearSite], scores: Scores, config: BSNConfig) -> Any:
    """SGD state for `scores` (hyperparameters from `config`), placed as `_step` returns it."""
    state = OPTIMIZER(
        learning_rate=config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    ).init(scores)
    if model.mesh is None:
        return state
    return jax.device_put(state, state_shardings(model, sites, state))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _step(model, sites, params, scores, opt_state, counts, loss_weight, forget, retain):
    grad_fn = jax.value_and_grad(
        lambda s: bsn_loss(model, sites, params, s, counts, loss_weight, forget, retain),
        has_aux=True,
    )
    (loss, (ce_f, ce_r)), grads = grad_fn(scores)
    updates, opt_state = _UPDATE(grads, opt_state, scores)
    # Outputs keep the inputs' placement (see `init_state`), so the step compiles once.
    scores = _constrain(model, sites, optax.apply_updates(scores, updates))
    return scores, _constrain(model, sites, opt_state), loss, ce_f, ce_r


@functools.partial(jax.jit, static_argnums=(0,))
def _merge(sites, params, scores, counts):
    return apply_masks(params, sites, scores, counts, straight_through=False)


def merge_masks(
    params: Params, sites: Sequence[LinearSite], scores: Scores, counts: Sequence[int]
) -> tuple[Params, list[dict[str, Any]]]:
    """W ← W ⊙ mask for every site (shardings kept); returns (params, per-matrix report)."""
    merged = _merge(tuple(sites), params, scores, [jnp.int32(n) for n in counts])
    report = []
    for site, n in zip(sites, counts):
        old = get_path(params, site.kernel_path)
        new = get_path(merged, site.kernel_path)
        norm = float(jnp.linalg.norm(old.astype(jnp.float32)))
        delta = float(jnp.linalg.norm((new - old).astype(jnp.float32)))
        size = site.d_in * site.d_out
        report.append(
            {
                "id": site.id,
                "size": size,
                "pruned": int(n),
                "pruned_fraction": n / size,
                "rel_delta_fro": delta / max(norm, np.finfo(np.float32).tiny),
            }
        )
    return merged, report


def _windows(name: str, array: np.ndarray, vocab_size: int) -> np.ndarray:
    """Token windows int32 [N, L]; ids in [0, vocab), or `PAD` (−1) as right padding of shorter
    windows (each row: real tokens, then only pads; at least 2 real tokens)."""
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 2:
        raise InputError(f"BSN `{name}` must be token windows [N >= 1, L >= 2], got {array.shape}.")
    if not np.issubdtype(array.dtype, np.integer) or array.max() >= vocab_size:
        raise InputError(f"BSN `{name}` must hold integer token ids in [0, {vocab_size}).")
    real = array >= 0
    if (array < PAD).any() or (real[:, 1:] & ~real[:, :-1]).any() or (real.sum(1) < 2).any():
        raise InputError(
            f"BSN `{name}` must hold token ids in [0, {vocab_size}), right-padded with {PAD} "
            "after at least 2 real tokens per window."
        )
    return array.astype(np.int32)


def _forget_batches(n: int, rows: int, epochs: int, seed: int):
    """Row indices per step: each epoch a seeded permutation, the last batch wrapped around."""
    steps = -(-n // rows)
    for epoch in range(epochs):
        perm = np.random.default_rng((seed, 0, epoch)).permutation(n)
        padded = np.concatenate([perm, perm[: steps * rows - n]])
        for j in range(steps):
            yield padded[j * rows : (j + 1) * rows]


def _retain_batch(n: int, rows: int, step: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng((seed, 1, step))
    return rng.choice(n, rows, replace=rows > n)


def train_bsn(
    model,
    forget: np.ndarray,
    retain: np.ndarray,
    config: BSNConfig = BSNConfig(),
    log: Callable[[str], None] | None = print,
) -> BSNResult:
    """Learn a BalancedSubnet mask for `model` and merge it into a copy of its parameters.

    Args:
      model: a `models.LanguageModel` (placed on its mesh; its params are not changed).
      forget: memorized windows int [N, L] (prefix ‖ suffix; shorter ones right-padded with
        `PAD`, see `rows_to_windows`), whose loss is raised.
      retain: clean windows int [M, L'], whose loss is kept low.
      config: hyperparameters (see `BSNConfig`).
      log: progress printer (None: silent).
    """
    vocab = model.config.vocab_size
    forget = _windows("forget", forget, vocab)
    retain = _windows("retain", retain, vocab)
    sites = tuple(masked_sites(model, config.layers, config.projections))
    counts = [prune_count(s.d_in * s.d_out, config.ratio, s.id) for s in sites]
    t0 = time.perf_counter()
    scores = init_scores(model, sites, config.seed)
    opt_state = init_state(model, sites, scores, config)
    rows_f = round_batch(config.batch_size, model, forget.shape[0])
    rows_r = round_batch(config.batch_size, model, retain.shape[0])
    counts_arr = [jnp.int32(n) for n in counts]
    w = jnp.float32(config.loss_weight)
    history: list[dict[str, float]] = []
    running: list[tuple[jax.Array, ...]] = []
    step = 0
    for idx in _forget_batches(forget.shape[0], rows_f, config.epochs, config.seed):
        if config.max_steps is not None and step >= config.max_steps:
            break
        f = place_batch(model, forget[idx])
        r = place_batch(model, retain[_retain_batch(retain.shape[0], rows_r, step, config.seed)])
        scores, opt_state, loss, ce_f, ce_r = _step(
            model, sites, model.params, scores, opt_state, counts_arr, w, f, r
        )
        running.append((loss, ce_f, ce_r))
        step += 1
        if step % config.log_every == 0:
            history.append(_summarize(step, running))
            running = []
            if log is not None:
                h = history[-1]
                log(
                    f"bsn step {step}: loss {h['loss']:.4f}  CE forget {h['ce_forget']:.4f}  "
                    f"CE retain {h['ce_retain']:.4f}"
                )
    if running:
        history.append(_summarize(step, running))
    params, report = merge_masks(model.params, sites, scores, counts)
    jax.block_until_ready(params)
    return BSNResult(
        params=params,
        scores=scores,
        sites=list(sites),
        report=report,
        history=history,
        steps=step,
        seconds=time.perf_counter() - t0,
        config=config,
    )


def _summarize(step: int, running: list[tuple[jax.Array, ...]]) -> dict[str, float]:
    values = np.asarray(jax.device_get(running), np.float64).mean(axis=0)
    return {
        "step": step,
        "loss": float(values[0]),
        "ce_forget": float(values[1]),
        "ce_retain": float(values[2]),
    }


def rows_to_windows(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """Memorized rows (`prefix_ids`, `suffix_ids`) -> windows int32 [N, max(P + S)]; rows of
    different lengths (the quotes protocol) are right-padded with `PAD`, which the loss skips
    (`kfac_mem.training.next_token_loss`)."""
    if not rows:
        raise InputError("The forget set is empty; BSN needs at least one memorized window.")
    return pad_right([list(r["prefix_ids"]) + list(r["suffix_ids"]) for r in rows])
