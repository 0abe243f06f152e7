"""A PyTorch hook pipeline in the style of the authors' release (written here from the description
in docs/design.md §2.9 and below; no code copied).

Collection: the target blocks are processed in groups of `layers_per_pass`, and **each group
re-streams every window**. For each hooked `nn.Linear`, a forward pre-hook takes the input
x[:, :-1] and a full backward hook takes grad_output[0][:, :-1] (the last position has no
label); both are upcast to float32 and accumulated as A += xᵀx, G += gᵀg per module (gate and up
each keep their own A). Only the group's target weights require grad (so autograd still forms
their dW, as the release does). The loss is the **mean** cross-entropy over the B·(S−1) labelled
positions with float32 logits, so every g carries 1/(B(S−1)) and

    G_ref = Σ_t g_t g_tᵀ / n = G_ours / (B(S−1))²    (equal-size batches; n = Σ B(S−1)),
    A_ref = A_ours.

Labels are the gold next tokens (empirical) or one `torch.multinomial` draw per position
(seeded here; the release's draw is unseeded). Per group, `{blk{b}.{proj}: {A, G, n_tokens}}` is
saved with `torch.save`.

Edit, per matrix: reload the group's factor file, float32 `torch.linalg.eigh` of A and G (sorted
descending), a best-first heap over λ_i·μ_j (each product a torch scalar read with `.item()`,
ties by smaller i then j) adding pairs while the running Python-float sum < ρ·(Σλ)(Σμ) (the
crossing pair kept; total in float32 including any tiny negative eigenvalues), then the dense
W' = U_G((U_Gᵀ W U_A) ⊙ M)U_Aᵀ in float32. ρ ≥ 0.9999 leaves W untouched.
"""

from __future__ import annotations

import heapq
import os
import time
import warnings

import numpy as np
import torch
from torch.nn import functional as F

NO_EDIT_RHO = 0.9999
# Expected: the lowest hooked layer's input does not require grad, so the hook sees outputs only.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients")


def _module_id(block: int, projection: str) -> str:
    return f"model.layers.{block}.mlp.{projection}_proj"


def _file_key(block: int, projection: str) -> str:
    return f"blk{block}.{projection}"


def collect_groups(
    model: torch.nn.Module,
    windows: np.ndarray,
    blocks: list[int],
    projections: tuple[str, ...],
    layers_per_pass: int,
    batch_size: int,
    out_dir: str | None = None,
    sample_labels: bool = False,
    seed: int = 0,
    release_execution: bool = False,
) -> dict:
    """Factors of `projections` in `blocks`, one full pass over `windows` per group of blocks.

    `release_execution` also runs the model as the release does: reentrant gradient
    checkpointing, `enable_input_require_grads` (backward reaches the embeddings) and train mode.
    Otherwise backward stops below the lowest hooked layer (cheaper for the reference).

    Returns {"seconds", "group_seconds", "factors": {site id: (A, G, n)} (float32 means as
    above), "files"}.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    if release_execution:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model.enable_input_require_grads()
        model.train()
    groups = [blocks[i : i + layers_per_pass] for i in range(0, len(blocks), layers_per_pass)]
    data = torch.as_tensor(np.asarray(windows, np.int64))
    gen = torch.Generator().manual_seed(seed)
    factors, files, group_seconds = {}, [], []
    t_all = time.perf_counter()
    for group in groups:
        t0 = time.perf_counter()
        sums = _collect_group(model, data, group, projections, batch_size, sample_labels, gen)
        record = {}
        for (block, proj), s in sums.items():
            a, g = s["A"] / s["n"], s["G"] / s["n"]
            record[_file_key(block, proj)] = {"A": a, "G": g, "n_tokens": s["n"]}
            factors[_module_id(block, proj)] = (a, g, s["n"])
        if out_dir is not None:
            os.makedirs(out_dir, exist_ok=True)
            path = os.path.join(out_dir, f"kfac_factors_blk_{'_'.join(map(str, group))}.pt")
            torch.save(record, path)
            files.append(path)
        group_seconds.append(time.perf_counter() - t0)
    return {
        "seconds": time.perf_counter() - t_all,
        "group_seconds": group_seconds,
        "factors": factors,
        "files": files,
    }


def _collect_group(model, data, group, projections, batch_size, sample_labels, gen) -> dict:
    sums: dict[tuple[int, str], dict] = {}
    handles = []
    for block in group:
        for proj in projections:
            mod = model.get_submodule(_module_id(block, proj))
            mod.weight.requires_grad_(True)
            s = sums[(block, proj)] = {"A": None, "G": None, "n": 0}
            handles.append(mod.register_forward_pre_hook(_pre_hook(s)))
            handles.append(mod.register_full_backward_hook(_backward_hook(s)))
    try:
        for start in range(0, data.shape[0], batch_size):  # the last batch may be partial
            batch = data[start : start + batch_size]
            model.zero_grad(set_to_none=True)
            logits = model(input_ids=batch).logits[:, :-1].float()
            flat = logits.reshape(-1, logits.shape[-1])
            if sample_labels:
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(flat, -1), 1, generator=gen)[:, 0]
            else:
                labels = batch[:, 1:].reshape(-1)
            F.cross_entropy(flat, labels).backward()  # mean over B·(S−1)
    finally:
        for h in handles:
            h.remove()
        for block in group:
            for proj in projections:
                model.get_submodule(_module_id(block, proj)).weight.requires_grad_(False)
        model.zero_grad(set_to_none=True)
    return sums


def _pre_hook(s: dict):
    def hook(module, args):
        if not torch.is_grad_enabled():
            return
        x = args[0].detach()[:, :-1].reshape(-1, args[0].shape[-1]).float()
        s["A"] = x.T @ x if s["A"] is None else s["A"].addmm_(x.T, x)
        s["n"] += x.shape[0]

    return hook


def _backward_hook(s: dict):
    def hook(module, grad_input, grad_output):
        g = grad_output[0].detach()[:, :-1].reshape(-1, grad_output[0].shape[-1]).float()
        s["G"] = g.T @ g if s["G"] is None else s["G"].addmm_(g.T, g)

    return hook


# --- edit -----------------------------------------------------------------------------------------


def eigh_desc(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 eigh, eigenvalues descending, eigenvectors as columns in the same order."""
    w, v = torch.linalg.eigh(m.float())
    return w.flip(0), v.flip(1)


def heap_select(
    lam: torch.Tensor, mu: torch.Tensor, rho: float, max_pops: int | None = None
) -> tuple[torch.Tensor, float]:
    """Best-first walk over λ_i·μ_j; returns (bool mask [m, n], kept mass as a Python float).

    `max_pops` stops the walk early (benchmarks only: the mask is then incomplete)."""
    m, n = lam.shape[0], mu.shape[0]
    target = rho * (lam.sum() * mu.sum()).item()
    heap = [(-(lam[0] * mu[0]).item(), 0, 0)]
    seen = {(0, 0)}
    rows: list[int] = []
    cols: list[int] = []
    cum = 0.0
    limit = float("inf") if max_pops is None else max_pops
    while heap and cum < target and len(rows) < limit:
        neg, i, j = heapq.heappop(heap)
        cum -= neg
        rows.append(i)
        cols.append(j)
        if i + 1 < m and (i + 1, j) not in seen:
            seen.add((i + 1, j))
            heapq.heappush(heap, (-(lam[i + 1] * mu[j]).item(), i + 1, j))
        if j + 1 < n and (i, j + 1) not in seen:
            seen.add((i, j + 1))
            heapq.heappush(heap, (-(lam[i] * mu[j + 1]).item(), i, j + 1))
    mask = torch.zeros((m, n), dtype=torch.bool)
    mask[rows, cols] = True
    return mask, cum


def reconstruct_dense(
    w: torch.Tensor, u_g: torch.Tensor, u_a: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """W' = U_G((U_Gᵀ W U_A) ⊙ M)U_Aᵀ in float32."""
    c = u_g.T @ w.float() @ u_a
    return u_g @ (c * mask) @ u_a.T


def edit_matrix(
    w: torch.Tensor,
    a: torch.Tensor,
    g: torch.Tensor,
    rho: float,
    bases: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> dict:
    """Edit one W [d_out, d_in]; `bases` = (λ, U_G, μ, U_A) replaces the eigh (for parity tests).

    Returns {"w", "mask", "kept_mass_heap", "eigh_s", "select_s", "reconstruct_s"}.
    """
    if rho >= NO_EDIT_RHO:
        return {"w": w, "mask": None, "eigh_s": 0.0, "select_s": 0.0, "reconstruct_s": 0.0}
    t0 = time.perf_counter()
    if bases is None:
        lam, u_g = eigh_desc(g)
        mu, u_a = eigh_desc(a)
    else:
        lam, u_g, mu, u_a = (torch.as_tensor(np.asarray(x, np.float32)) for x in bases)
    t1 = time.perf_counter()
    mask, cum = heap_select(lam, mu, rho)
    t2 = time.perf_counter()
    new = reconstruct_dense(w, u_g, u_a, mask).to(w.dtype)
    t3 = time.perf_counter()
    return {
        "w": new,
        "mask": mask,
        "lam": lam,
        "mu": mu,
        "kept_mass_heap": cum,
        "eigh_s": t1 - t0,
        "select_s": t2 - t1,
        "reconstruct_s": t3 - t2,
    }


def edit_from_files(
    files: list[str], weights: dict[str, torch.Tensor], rho: float
) -> dict[str, dict]:
    """The release's driver loop: per matrix, reload its group's factor file, then `edit_matrix`."""
    where = {}
    for path in files:
        for key in torch.load(path, weights_only=True):
            where[key] = path
    out = {}
    for site_id, w in weights.items():
        parts = site_id.split(".")
        key = _file_key(int(parts[2]), parts[4].removesuffix("_proj"))
        t0 = time.perf_counter()
        record = torch.load(where[key], weights_only=True)[key]
        load_s = time.perf_counter() - t0
        out[site_id] = {**edit_matrix(w, record["A"], record["G"], rho), "load_s": load_s}
    return out
