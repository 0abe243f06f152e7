"""The analyzer's jitted, mesh-sharded step: one forward/backward per batch for every analyzed layer.

Like collection (`kfac_mem.collection`), the batch is split over the mesh's data axes, parameters keep
their own sharding, and `capture.inputs_and_output_grads` yields the per-position inputs a_t and
output gradients g_t of the summed cross-entropy (sampled or gold labels). Per layer the step then
projects a and g onto the eigenbases (â = a U_A, ĝ = g U_G), forms per-example statistics of
Γ̃_n = ĝ_nᵀ â_n block by block (`per_example.gamma_stats`) and adds Σ_n Γ̃_n² into a row-sharded
[d_out, d_in] accumulator. It also measures per-example band activation strengths of the inputs in
the K-FAC basis (pair-faithful Π bands and μ-ranked bands of U_A) and the SVD basis of W.

Γ_n is the exact gradient ∂L_n/∂W of the example's loss: g_t is zero at positions whose output
feeds no counted loss, so no position mask is applied to Γ; the activation strengths are averaged
over the loss positions only. Rows padded onto the last batch have no counted position, so their
g (and everything derived from it) is zero.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from kfac_mem.analysis.bands import KfacBands, rank_bands
from kfac_mem.analysis.per_example import band_strength, gamma_stats, project
from kfac_mem.collection.capture import inputs_and_output_grads
from kfac_mem.decomposition.store import SiteEigen
from kfac_mem.sharding import logical_to_sharding
from models import axes
from models.sites import LinearSite

BASES = ("kfac", "kfac_mu", "svd")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the step.

    Attributes:
      mode: "sampled" (labels drawn from the model's softmax) or "empirical" (gold next tokens).
      top_k: top directions kept per example.
      vocab_chunk: vocabulary chunk of the head's loss gradient.
      row_chunks: ((site id, rows of Γ̃ per block), ...).
      svd: also measure activation strengths in the SVD basis of W.
    """

    mode: str
    top_k: int
    vocab_chunk: int
    row_chunks: tuple[tuple[str, int], ...]
    svd: bool = True


def site_bases(
    eig: SiteEigen, bands: KfacBands, svd_v: np.ndarray | None, band_defs
) -> dict[str, np.ndarray]:
    """Host arrays the step needs for one layer.

    U_G [d_out, d_out], U_A [d_in, d_in] (eigenvector columns, descending), band staircases
    counts [n_bands − 1, d_out], activation band weights w_kfac = n_B(j) [d_in, n_bands] (pair-
    faithful), w_mu [d_in, n_bands] (A eigenvectors by μ rank), and with the SVD basis its right
    singular vectors V [d_in, r] (descending σ) and w_svd [r, n_bands].
    """
    out = {
        "U_G": np.asarray(eig.U_G, np.float32),
        "U_A": np.asarray(eig.U_A, np.float32),
        "counts": np.asarray(bands.counts, np.int32),
        "w_kfac": bands.column_multiplicity(),
        "w_mu": rank_bands(eig.site.d_in, band_defs),
    }
    if svd_v is not None:
        out["V_svd"] = np.asarray(svd_v, np.float32)
        out["w_svd"] = rank_bands(svd_v.shape[1], band_defs)
    return out


def to_host(tree):
    """Numpy copies of a tree of (possibly multi-host sharded) arrays."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree_util.tree_map(one, tree)


def right_singular_vectors(w: np.ndarray) -> np.ndarray:
    """V [d_in, r] of W [d_out, d_in] = U Σ Vᵀ, columns by descending σ, r = min(d_out, d_in)."""
    _, _, vt = np.linalg.svd(np.asarray(w, np.float32), full_matrices=False)
    return vt.T


def accumulator_shardings(sites: Sequence[LinearSite], mesh, rules) -> dict[str, NamedSharding]:
    """Row-sharded [d_out, d_in] Σ Γ̃² accumulators (logical axis `factor_rows`)."""
    return {
        s.id: logical_to_sharding((axes.FACTOR_ROWS, None), (s.d_out, s.d_in), mesh, rules)
        for s in sites
    }


def zero_accumulators(sites, shardings) -> dict[str, jax.Array]:
    return {
        s.id: jax.jit(lambda s=s: jnp.zeros((s.d_out, s.d_in), jnp.float32), out_shardings=sh)()
        for s, sh in ((s, shardings[s.id]) for s in sites)
    }


def place_replicated(tree, mesh):
    """Host arrays replicated on every device of `mesh`."""
    sh = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda x: jax.device_put(np.asarray(x), sh), tree)


def place_rows(array: np.ndarray, start: int, rows: int, sharding, dtype) -> jax.Array:
    """Global [rows, L] batch of array[start:start+rows] (zero rows past the end); each process
    reads only the rows its devices hold."""
    shape = (rows, array.shape[1])

    def block(index):
        r = index[0]
        lo = start + (r.start or 0)
        hi = start + (rows if r.stop is None else r.stop)
        part = np.zeros((hi - lo, array.shape[1]), dtype)
        have = np.asarray(array[lo : min(hi, len(array))], dtype)
        part[: len(have)] = have
        return part[:, index[1]]

    return jax.make_array_from_callback(shape, sharding, block)


def make_step(
    model,
    sites: Sequence[LinearSite],
    config: StepConfig,
    acc_shardings: Mapping[str, NamedSharding],
) -> Callable:
    """Jitted (params, bases, acc, tokens, positions, key) -> (acc, out), donating `acc`.

    tokens int32 [B, L], positions float32 [B, L] (loss positions), key a PRNG key (sampled mode).
    out = {"n_positions": [B], "loss": summed CE of the batch, "sites": {site id: {"total",
    "fourth", "band", "top_values", "top_index", "act": {basis: (Σ‖P_B x‖ [B, nb],
    Σ‖P_B x‖² [B, nb])}}}}.
    """
    chunks = dict(config.row_chunks)

    def step(params, bases, acc, tokens, positions, key):
        inputs, labels, weights = model.loss_targets(tokens)
        weights = weights * positions
        acts, grads, loss = inputs_and_output_grads(
            model, params, inputs, labels, weights, sites, config.mode, key, config.vocab_chunk
        )
        new_acc, per_site = {}, {}
        for site in sites:
            b = bases[site.id]
            a = acts[site.input_group]
            a_hat = project(a, b["U_A"])
            g_hat = project(grads[site.id], b["U_G"])
            stats, sums = gamma_stats(g_hat, a_hat, b["counts"], config.top_k, chunks[site.id])
            new_acc[site.id] = acc[site.id] + sums
            act = {
                "kfac": band_strength(a_hat, b["w_kfac"], weights),
                "kfac_mu": band_strength(a_hat, b["w_mu"], weights),
            }
            if config.svd:
                act["svd"] = band_strength(project(a, b["V_svd"]), b["w_svd"], weights)
            per_site[site.id] = {**stats, "act": act}
        out = {"n_positions": weights.sum(1), "loss": loss, "sites": per_site}
        return new_acc, out

    return jax.jit(step, donate_argnums=2, out_shardings=(dict(acc_shardings), None))
