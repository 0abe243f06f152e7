"""kronfluence (PyTorch, CPU) on the same HF directory and windows: covariances + eigendecomposition.

Normalization mapping to kfac-mem (checked by `agreement`):
  * kronfluence sums a aᵀ over every position of every window and divides by the number of
    non-padding tokens, i.e. the sum of the mask `Task.get_attention_mask` returns (all B·S
    positions, the last included, when it returns None). Its mask also zeroes the masked
    activations. We return a mask that is 1 except at the last position of each window, so its
    A = Σ_{t<S−1} a aᵀ / (B·(S−1)) = our A exactly. Without the mask its A would be
    (B(S−1)·A_ours + Σ a_last a_lastᵀ) / (B·S).
  * G: `compute_train_loss` returns the cross-entropy **summed** over positions 0..S−2 (labels
    tokens[1:]), so g_t = ∂L_sum/∂s_t as ours. The output at the last position feeds no loss term
    (causal attention), so its g is exactly 0 and only the count matters: B·(S−1) with the mask,
    i.e. G = ours (without the mask G would be (S−1)/S · ours).
  * `use_empirical_fisher=True` uses these gold labels (our `--mode empirical`); otherwise labels
    are drawn from the model's softmax (`sample=True`), one per position.
Stored covariances are sums; means = sum / num_*_processed (what `perform_eigendecomposition`
does, in float64 by default, before `torch.linalg.eigh`; eigenvalues ascending).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments
from kronfluence.task import Task
from torch.nn import functional as F

from benchmarks.peers.fixtures import load_torch_model

# kronfluence 1.0.1 builds a (disabled) torch.cuda.amp.GradScaler, deprecated in torch 2.13.
warnings.filterwarnings("ignore", message=".*torch.cuda.amp.GradScaler", category=FutureWarning)


class CausalLMTask(Task):
    """Summed next-token cross-entropy over positions 0..S−2 of [B, S] token windows."""

    def __init__(self, modules: list[str]):
        self.modules = list(modules)

    def compute_train_loss(self, batch, model, sample: bool = False) -> torch.Tensor:
        logits = model(input_ids=batch).logits[:, :-1].float()
        flat = logits.reshape(-1, logits.shape[-1])
        if sample:
            with torch.no_grad():
                labels = torch.multinomial(torch.softmax(flat, -1), 1).squeeze(-1)
        else:
            labels = batch[:, 1:].reshape(-1)
        return F.cross_entropy(flat, labels, reduction="sum")

    def compute_measurement(self, batch, model) -> torch.Tensor:
        return self.compute_train_loss(batch, model)

    def get_influence_tracked_modules(self) -> list[str]:
        return self.modules

    def get_attention_mask(self, batch) -> torch.Tensor:
        mask = torch.ones_like(batch)
        mask[:, -1] = 0
        return mask


class WindowDataset(torch.utils.data.Dataset):
    def __init__(self, windows: np.ndarray):
        self.windows = torch.as_tensor(np.asarray(windows, np.int64))

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.windows[i]


def analyzer(hf_dir: str, site_ids: list[str], out_dir: str) -> Analyzer:
    """A kronfluence Analyzer over a freshly loaded model, tracking exactly `site_ids`."""
    task = CausalLMTask(site_ids)
    model = prepare_model(load_torch_model(hf_dir), task)
    return Analyzer(
        "peers",
        model,
        task,
        cpu=True,
        disable_tqdm=True,
        output_dir=out_dir,
        disable_model_save=True,
    )


def fit(
    az: Analyzer, windows: np.ndarray, batch_size: int, empirical: bool = True, name: str = "f"
) -> dict:
    """`fit_covariance_matrices` over all windows (sequential, no drop); seconds and the means
    {site: (A, G, n_A, n_G)} as float64 numpy."""
    args = FactorArguments(strategy="kfac", use_empirical_fisher=empirical)
    t0 = time.perf_counter()
    az.fit_covariance_matrices(
        name,
        WindowDataset(windows),
        per_device_batch_size=batch_size,
        factor_args=args,
        overwrite_output_dir=True,
    )
    seconds = time.perf_counter() - t0
    cov = az.load_covariance_matrices(name)
    means = {}
    for site in cov["activation_covariance"]:
        n_a = int(cov["num_activation_covariance_processed"][site].item())
        n_g = int(cov["num_gradient_covariance_processed"][site].item())
        a = cov["activation_covariance"][site].double().numpy() / n_a
        g = cov["gradient_covariance"][site].double().numpy() / n_g
        means[site] = (a, g, n_a, n_g)
    return {"seconds": seconds, "factors": means}


def eigen(az: Analyzer, name: str = "f", dtype: torch.dtype = torch.float64) -> dict:
    """`perform_eigendecomposition` (every module: its A and its G); seconds and
    {site: (λ desc, μ desc)} as numpy."""
    args = FactorArguments(strategy="kfac", eigendecomposition_dtype=dtype)
    t0 = time.perf_counter()
    az.perform_eigendecomposition(name, factor_args=args, overwrite_output_dir=True)
    seconds = time.perf_counter() - t0
    eig = az.load_eigendecomposition(name)
    values = {
        site: (
            eig["gradient_eigenvalues"][site].double().numpy()[::-1].copy(),
            eig["activation_eigenvalues"][site].double().numpy()[::-1].copy(),
        )
        for site in eig["gradient_eigenvalues"]
    }
    return {"seconds": seconds, "eigenvalues": values}
