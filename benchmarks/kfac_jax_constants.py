"""Measure how kfac-jax's raw Kronecker factors relate to kfac_mem's sums (docs/design.md §8).

For windows of S tokens, positions x = windows[:, :-1] (T = S − 1 per window) and a batch of B
windows, kfac_mem stores exact sums ΣA = Σ_t a aᵀ and ΣG = Σ_t g gᵀ (g = ∂(summed CE)/∂s). This
script runs kfac-jax 0.0.8's `BlockDiagonalCurvature` on the same batch and prints, per layer and B,

    ΣA / A_raw                       (expected B, every mode)
    ΣG / G_raw  fisher_empirical     (expected B², exact: gold labels)
    ΣG / G_raw  fisher_gradients     (expected B; Monte Carlo: kfac-jax draws its own labels, so
                                      the ratio of traces of N-update means is compared with the
                                      mean over N seeds of kfac_mem's sampled ΣG)

    PYTHONPATH=$PWD .venv/bin/python benchmarks/kfac_jax_constants.py [--draws 64]
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from kfac_mem.collection.capture import inputs_and_output_grads
from kfac_mem.collection.kfac_jax_engine import _block_factors, _estimator
from kfac_mem.collection.sites import input_groups, select_sites
from models import load_pretrained


def our_sums(model, sites, toks, mode, key):
    """Exact kfac_mem sums over positions [:-1] of `toks` [B, S] (labels toks[:, 1:] or sampled)."""
    inputs, labels, weights = model.loss_targets(jnp.asarray(toks))
    acts, grads, _ = inputs_and_output_grads(
        model, model.params, inputs, labels, weights, sites, mode, key, 8192
    )
    w = weights[..., None]
    A = {g: jnp.einsum("bsi,bsj->ij", a * w, a * w) for g, a in acts.items()}
    G = {s.id: jnp.einsum("bsi,bsj->ij", grads[s.id] * w, grads[s.id] * w) for s in sites}
    return A, G


def kfac_raw(model, est, sites, toks, mode, key):
    """(A_raw by input group, G_raw by site) of one kfac-jax update on windows [:, :-1]."""
    x, y = jnp.asarray(toks[:, :-1]), jnp.asarray(toks[:, 1:])
    args = (model.params, (x, y))
    state = est.init(jax.random.key(0), args, None, None)
    state = est.update_curvature_matrix_estimate(
        state, 0.0, 1.0, 0.0, x.shape[0], key, args, estimation_mode=mode
    )
    A = {
        g: _block_factors(est, state, model.params, s)[0].value
        for g, s in input_groups(sites).items()
    }
    G = {s.id: _block_factors(est, state, model.params, s)[1].value for s in sites}
    return A, G


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=64, help="Monte-Carlo updates for fisher_gradients")
    p.add_argument("--seq", type=int, default=12, help="window length S (T = S - 1 positions)")
    args = p.parse_args()
    model = load_pretrained("tiny-olmo2")
    sites = select_sites(model.linear_sites(), layers=[0], projections=["up", "down"])
    est = _estimator(model)
    raw = jax.jit(functools.partial(kfac_raw, model, est, sites), static_argnums=1)
    ours = jax.jit(functools.partial(our_sums, model, sites), static_argnums=1)
    groups = input_groups(sites)
    print(f"kfac-jax constants on tiny-olmo2 layer 0 up/down, S = {args.seq}, 1 CPU device")
    for B in (2, 4, 8):
        toks = np.random.RandomState(B).randint(0, model.config.vocab_size, (B, args.seq))
        key = jax.random.key(B)
        A_raw, G_raw = raw(toks, "fisher_empirical", key)
        A, G = ours(toks, "empirical", key)
        for g in groups:
            r = np.asarray(A[g]) / np.asarray(A_raw[g])
            print(f"B={B} A  {g:40s} ΣA/A_raw = {np.median(r):.6f} (spread {np.ptp(r):.1e})")
        for s in sites:
            r = np.trace(np.asarray(G[s.id])) / np.trace(np.asarray(G_raw[s.id]))
            err = np.abs(np.asarray(G[s.id]) / (B * B) - np.asarray(G_raw[s.id])).max()
            err /= np.abs(np.asarray(G_raw[s.id])).max()
            print(
                f"B={B} G  {s.id:40s} empirical ΣG/G_raw = {r:.6f} (B² = {B * B}, max rel {err:.1e})"
            )
        keys = jax.random.split(jax.random.key(100 + B), args.draws)
        k_tr = {s.id: 0.0 for s in sites}
        o_tr = {s.id: 0.0 for s in sites}
        for k in keys:
            _, g_raw = raw(toks, "fisher_gradients", k)
            _, g_ours = ours(toks, "sampled", jax.random.fold_in(k, 1))
            for s in sites:
                k_tr[s.id] += float(jnp.trace(g_raw[s.id])) / args.draws
                o_tr[s.id] += float(jnp.trace(g_ours[s.id])) / args.draws
        for s in sites:
            print(
                f"B={B} G  {s.id:40s} sampled   tr ΣG/tr G_raw = {o_tr[s.id] / k_tr[s.id]:.3f} "
                f"(B = {B}; {args.draws} draws each)"
            )


if __name__ == "__main__":
    main()
