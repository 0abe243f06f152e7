"""The `kfac-jax` collection engine and an importer of kfac-jax curvature states.

kfac-jax's `BlockDiagonalCurvature` registers every dense layer by graph matching and stores, per
batch of B windows (measured as in docs/design.md §8):
    A_raw = Σ_tok a aᵀ / B;   G_raw = Σ_tok g gᵀ / B    (fisher_gradients, sampled labels)
                              G_raw = Σ_tok g gᵀ / B²   (fisher_empirical, given labels)
so our sums are A_raw·B and G_raw·B (resp. ·B²). `use_masking=False` is required (the default
drops tokens whose output gradient is exactly zero, e.g. q_proj at position 0).

Our positions exclude the last token of each window. For a causal LM the first S−1 positions do
not depend on the last token, so running kfac-jax on windows[:, :-1] with labels windows[:, 1:]
gives exactly our statistics. Sampled labels: kfac-jax's `fisher_gradients` draws labels from its
own RNG stream, which cannot reproduce the native engine's draws; to give the same numbers, the
labels are drawn with the native sampler (same seed, same draws) and handed to kfac-jax's
`fisher_empirical` estimator, which is then exactly the Monte-Carlo Fisher of those samples.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from kfac_mem.atomic import write_json_atomic
from kfac_mem.collection import store as fstore
from kfac_mem.collection.head_loss import head_cotangent
from kfac_mem.collection.sites import input_groups
from models.sites import LinearSite, get_path


def _require_kfac_jax():
    try:
        import kfac_jax
    except ImportError as e:  # pragma: no cover - kfac-jax is a pinned dependency
        raise ImportError(
            "`engine` 'kfac-jax' needs kfac-jax==0.0.8 (installed with the project)."
        ) from e
    kfac_jax.set_default_tag_to_block_ctor(
        "repeated_dense",
        functools.partial(kfac_jax.RepeatedDenseKroneckerFactored, use_masking=False),
    )
    return kfac_jax


def _estimator(model):
    kfac_jax = _require_kfac_jax()

    def loss_fn(params, batch):
        inputs, labels = batch
        hidden, _ = model.hidden_states(params, inputs)
        logits = hidden @ model.head_kernel(params).astype(hidden.dtype)
        bias = model.head_bias(params)
        if bias is not None:
            logits = logits + bias
        kfac_jax.register_softmax_cross_entropy_loss(logits.astype(jnp.float32), labels)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        return -jnp.take_along_axis(logp, labels[..., None], -1).sum() / inputs.shape[0]

    return kfac_jax.BlockDiagonalCurvature(func=loss_fn, default_estimation_mode="fisher_empirical")


def _block_factors(estimator, state, params, site: LinearSite):
    index = get_path(estimator.params_block_index, site.kernel_path[:-1])["kernel"]
    block = state.blocks_states[index]
    if not hasattr(block, "factors"):
        raise ValueError(
            f"kfac-jax did not register `{site.id}` as a dense Kronecker block "
            f"({type(estimator.blocks[index]).__name__}); use the native engine."
        )
    return block.factors[0], block.factors[1]


def make_kfac_jax_step(model, sites: Sequence[LinearSite], config, shardings, n_data: int = 1):
    """A step with the native step's signature (sums, params, batch, key, n_valid) -> (sums, stats);
    `collect` gives it only full batches (it cannot mask padding rows)."""
    if config.reduce != "step":
        raise ValueError("The kfac-jax engine reduces every step (use `reduce` 'step').")
    if getattr(model.config, "family", None) not in ("olmo2", "llama"):
        raise ValueError(
            "The kfac-jax engine supports causal language models only; use `engine` 'native'."
        )
    estimator = _estimator(model)
    groups = input_groups(sites)

    def step(sums: fstore.FactorSums, params, batch, key, n_valid):  # full batches only
        inputs, labels, weights = model.loss_targets(batch)
        if config.mode == "sampled":
            hidden, _ = model.hidden_states(params, inputs)
            _, _, labels = head_cotangent(
                hidden,
                model.head_kernel(params),
                model.head_bias(params),
                labels,
                weights,
                "sampled",
                key,
                config.vocab_chunk,
            )
        x, y = inputs[:, :-1], labels[:, :-1]
        B = x.shape[0]
        args = (params, (x, y))
        state = estimator.init(jax.random.key(0), args, None, None)
        state = estimator.update_curvature_matrix_estimate(
            state,
            ema_old=0.0,
            ema_new=1.0,
            identity_weight=0.0,
            batch_size=B,
            rng=key,
            func_args=args,
        )
        new_A, new_G, finite = {}, {}, {}
        for group, site in groups.items():
            a_raw, _ = _block_factors(estimator, state, params, site)
            new_A[group] = sums.A[group] + a_raw.value.astype(sums.A[group].dtype) * B
            finite[group] = jnp.all(jnp.isfinite(new_A[group]))
        for site in sites:
            _, g_raw = _block_factors(estimator, state, params, site)
            new_G[site.id] = sums.G[site.id] + g_raw.value.astype(sums.G[site.id].dtype) * (B * B)
            finite[site.id] = jnp.all(jnp.isfinite(new_G[site.id]))
        stats = {"loss": jnp.zeros(()), "count": jnp.sum(weights), "finite": finite}
        return fstore.FactorSums(new_A, new_G), stats

    return jax.jit(step, donate_argnums=0, out_shardings=(shardings, None))


def import_kfac_jax_state(
    estimator: Any,
    state: Any,
    model,
    sites: Sequence[LinearSite],
    out_dir: str,
    *,
    batch_size: int,
    positions_per_example: int,
    mode: str,
    metadata: dict[str, Any] | None = None,
) -> fstore.FactorRun:
    """Write an existing kfac-jax curvature state as a factor run (our format) at `out_dir`.

    Args:
      estimator: the `kfac_jax.BlockDiagonalCurvature` (or an optimizer's `.estimator`).
      state: its state (or an optimizer state's `.estimator_state`), accumulated with equal-weight
        updates (ema_old = ema_new = 1, the running mean over updates).
      model: the model whose params the estimator was built on (gives the site -> block mapping).
      batch_size: the `batch_size` passed to every update (windows per update).
      positions_per_example: positions per window that entered the factors (kfac-jax counts every
        position of the layer inputs it saw).
      mode: "sampled" (fisher_gradients: G_raw = Σ g gᵀ / B) or "empirical" (fisher_empirical:
        G_raw = Σ g gᵀ / B²).
    """
    if mode not in ("sampled", "empirical"):
        raise ValueError(f"`mode` must be 'sampled' or 'empirical', got {mode!r}.")
    if os.path.exists(os.path.join(out_dir, fstore.METADATA)):
        raise FileExistsError(f"{out_dir} already holds a factor run; choose a new directory.")
    B = batch_size
    g_scale = B if mode == "sampled" else B * B
    A, G, n_updates = {}, {}, None
    for group, site in input_groups(sites).items():
        a_raw, _ = _block_factors(estimator, state, model.params, site)
        n_updates = float(a_raw.weight)
        A[group] = jnp.asarray(a_raw.value, jnp.float32) * (n_updates * B)
    for site in sites:
        _, g_raw = _block_factors(estimator, state, model.params, site)
        G[site.id] = jnp.asarray(g_raw.value, jnp.float32) * (float(g_raw.weight) * g_scale)
    if not n_updates:
        raise ValueError("The kfac-jax state holds no updates (weight 0); nothing to import.")
    n_tokens = round(n_updates) * B * positions_per_example
    os.makedirs(out_dir, exist_ok=True)
    identity = {
        "format": fstore.FORMAT,
        "engine": "kfac-jax-import",
        "model": {
            "fingerprint": model.fingerprint(),
            "source": getattr(model, "source", ""),
            "config": model.config.to_dict(),
        },
        "corpus": {"imported": True},
        "mode": mode,
        "seed": None,
        "batch_size": B,
        "accumulate_dtype": "float32",
        "sites": [fstore.site_to_dict(s) for s in sites],
        **(metadata or {}),
    }
    info = {
        "n_tokens": n_tokens,
        "windows_done": round(n_updates) * B,
        "steps": round(n_updates),
        "complete": True,
        "loss_sum": 0.0,
    }
    with fstore.checkpoint_manager(out_dir) as manager:
        fstore.save_state(manager, info["steps"], fstore.FactorSums(A, G), info)
    write_json_atomic(os.path.join(out_dir, fstore.METADATA), {**identity, "progress": info})
    return fstore.FactorRun(out_dir)
