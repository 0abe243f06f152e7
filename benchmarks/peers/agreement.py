"""Agreement of kfac-mem with kronfluence and the reference-style pipeline on identical inputs.

  python -m benchmarks.peers.agreement --model tiny-olmo2
  python -m benchmarks.peers.agreement --model smollm2-135m --windows 8 --seq-len 64

Same HF directory, same token windows, empirical (gold) labels, float32 everywhere:
  * factors: our A, G (`kfac-mem collect` library call) against kronfluence's covariances
    (divided by its counts; mapping in `kron`'s docstring: equal when its mask drops the last
    position) and against the reference-style hooks (A equal; G × (B(S−1))² equal, mean loss).
    Error = ‖ours − theirs‖_F / ‖theirs‖_F per factor; goal ≤ 1e-4.
  * torch-pair: kronfluence against the reference-style hooks (both torch): the spread between
    two implementations on the same backend, for scale.
  * eigenvalues: ours (float32 stacked eigh) against kronfluence's float64 eigendecomposition,
    max |Δ| / λ_max per factor.
  * edit (gate/up at ρ): our edit (decompose + curvature-mass selection + staircase product) of
    the HF weights against the reference-style edit (its own float32 torch eigh, heap walk, dense
    product) fed the same factors (ours), and with our eigenbases (selection + reconstruction
    only). Reported: kept mass fraction of each (float64, on our clamped spectrum) and
    ‖W'_ours − W'_ref‖_F / ‖W'_ours − W‖_F (relative to the edit itself) and / ‖W‖_F.
Prints one JSON line per factor / matrix and a summary line.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile

import numpy as np

from benchmarks.peers import fixtures
from benchmarks.peers.measure import emit

TOLERANCE = 1e-4


def rel_fro(ours: np.ndarray, theirs: np.ndarray) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-300))


def _kept_mass(mask: np.ndarray, lam: np.ndarray, mu: np.ndarray) -> float:
    lam = np.maximum(np.asarray(lam, np.float64), 0.0)
    mu = np.maximum(np.asarray(mu, np.float64), 0.0)
    return float(lam @ mask.astype(np.float64) @ mu / (lam.sum() * mu.sum()))


def run(
    model_name: str,
    root: str,
    n_windows: int = 8,
    seq_len: int = 32,
    batch_size: int = 4,
    rho: float = 0.6,
    use_kron: bool = True,
    mesh=None,
    rules=None,
    scratch: str | None = None,
) -> dict:
    """All checks; returns {"rows": [...], "summary": {...}} (nothing printed)."""
    import torch

    from benchmarks.peers import ours, reference_style

    if n_windows % batch_size:
        raise ValueError("use whole batches: the G scale of a partial batch differs (mean loss).")
    hf = fixtures.hf_dir(root, model_name)
    windows_npy = fixtures.windows_path(root, model_name, n_windows, seq_len)
    windows = np.load(windows_npy)
    n_layers = fixtures.hf_config(hf)["num_hidden_layers"]
    layers = fixtures.paper_layers(n_layers)
    ids = fixtures.site_ids(layers, fixtures.MLP)
    own_scratch = scratch is None
    scratch = scratch or tempfile.mkdtemp(prefix="peers-agree-", dir=root)
    rows: list[dict] = []

    model, _ = ours.load(hf, mesh, rules)
    mine = ours.collect(model, windows_npy, ids, os.path.join(scratch, "ours"), batch_size)
    factors = mine["run"]
    scale = float(batch_size * (seq_len - 1)) ** 2

    ref = reference_style.collect_groups(
        fixtures.load_torch_model(hf), windows, layers, fixtures.MLP, 1, batch_size
    )
    for sid in ids:
        a, g, n = ref["factors"][sid]
        rows.append(
            {
                "check": "factors",
                "peer": "reference-style",
                "site": sid,
                "A_rel_fro": rel_fro(factors[sid].A, a.numpy()),
                "G_rel_fro": rel_fro(factors[sid].G, g.double().numpy() * scale),
                "n_ours": factors[sid].n_tokens,
                "n_peer": n,
            }
        )

    if use_kron:
        from benchmarks.peers import kron

        az = kron.analyzer(hf, ids, os.path.join(scratch, "kron"))
        fit = kron.fit(az, windows, batch_size, empirical=True)
        for sid in ids:
            a, g, n_a, n_g = fit["factors"][sid]
            rows.append(
                {
                    "check": "factors",
                    "peer": "kronfluence",
                    "site": sid,
                    "A_rel_fro": rel_fro(factors[sid].A, a),
                    "G_rel_fro": rel_fro(factors[sid].G, g),
                    "n_ours": factors[sid].n_tokens,
                    "n_peer": [n_a, n_g],
                }
            )

        for sid in ids:  # the two torch pipelines against each other (backend-internal spread)
            a, g, _, _ = fit["factors"][sid]
            a_r, g_r, _ = ref["factors"][sid]
            rows.append(
                {
                    "check": "torch-pair",
                    "peer": "kronfluence vs reference-style",
                    "site": sid,
                    "A_rel_fro": rel_fro(a, a_r.numpy()),
                    "G_rel_fro": rel_fro(g, g_r.double().numpy() * scale),
                }
            )

    dec = ours.decompose(
        os.path.join(scratch, "ours"), os.path.join(scratch, "eigen"), mesh=mesh, rules=rules
    )
    eigen = dec["eigen"]
    if use_kron:
        kev = kron.eigen(az)["eigenvalues"]
        for sid in ids:
            e = eigen.site(sid)
            lam_k, mu_k = kev[sid]
            rows.append(
                {
                    "check": "eigenvalues",
                    "peer": "kronfluence(float64)",
                    "site": sid,
                    "lam_max_abs_over_max": float(np.abs(e.lam - lam_k).max() / lam_k[0]),
                    "mu_max_abs_over_max": float(np.abs(e.mu - mu_k).max() / mu_k[0]),
                }
            )

    edit_ids = [s for s in ids if not s.endswith("down_proj")]
    weights = ours.hf_weights(hf, edit_ids)
    edited = ours.edit(os.path.join(scratch, "eigen"), weights, rho)
    for sid in edit_ids:
        w = weights[sid]
        e = eigen.site(sid)
        w_ours = edited["edited"][sid]
        variants = {
            "ref eigh + heap + dense (our factors)": None,
            "heap + dense on our eigenbases": (e.lam, e.U_G, e.mu, e.U_A),
        }
        for label, bases in variants.items():
            r = reference_style.edit_matrix(
                torch.from_numpy(np.array(w)),
                torch.as_tensor(factors[sid].A, dtype=torch.float32),
                torch.as_tensor(factors[sid].G, dtype=torch.float32),
                rho,
                bases,
            )
            w_ref = r["w"].numpy()
            rows.append(
                {
                    "check": "edit",
                    "peer": label,
                    "site": sid,
                    "rho": rho,
                    "kept_mass_ours": edited["kept_mass"][sid],
                    "kept_mass_ref": _kept_mass(r["mask"].numpy(), e.lam, e.mu),
                    "dW_rel_to_edit": float(
                        np.linalg.norm(w_ref - w_ours) / max(np.linalg.norm(w_ours - w), 1e-300)
                    ),
                    "dW_rel_to_W": float(np.linalg.norm(w_ref - w_ours) / np.linalg.norm(w)),
                    "kept_pairs_ours": edited["kept"][sid],
                    "kept_pairs_ref": int(r["mask"].sum()),
                }
            )
    if own_scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"rows": rows, "summary": summarize(rows)}


def summarize(rows: list[dict]) -> dict:
    """Worst error per check and peer; `pass` = factor errors ≤ 1e-4."""
    out: dict = {}
    for r in rows:
        key = f"{r['check']}:{r['peer']}"
        errs = {
            k: v
            for k, v in r.items()
            if k.endswith(("rel_fro", "over_max", "rel_to_edit", "rel_to_W"))
        }
        if r["check"] == "edit":
            errs["kept_mass_abs_diff"] = abs(r["kept_mass_ours"] - r["kept_mass_ref"])
        for k, v in errs.items():
            out.setdefault(key, {})[k] = max(out.get(key, {}).get(k, 0.0), v)
    worst = max(
        (v for k, d in out.items() if k.startswith("factors") for v in d.values()), default=0.0
    )
    out["factors_worst_rel_fro"] = worst
    out["factors_pass"] = worst <= TOLERANCE
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=fixtures.MODELS, default="tiny-olmo2")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--rho", type=float, default=0.6)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-kron", action="store_true", help="skip kronfluence")
    args = ap.parse_args()
    use_kron = not args.no_kron and importlib.util.find_spec("kronfluence") is not None
    root = fixtures.workdir(args.workdir)
    out = run(args.model, root, args.windows, args.seq_len, args.batch_size, args.rho, use_kron)
    common = {
        "model": args.model,
        "windows": args.windows,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
    }
    for row in out["rows"]:
        emit(**common, **row)
    emit(**common, check="summary", kron=use_kron, **out["summary"])


if __name__ == "__main__":
    main()
