"""Analyzer verdicts come from bootstrap intervals of effect sizes (findings.py)."""

import numpy as np

from kfac_mem.analysis.findings import build_findings, effect_sizes

BANDS = [{"band": "top"}, {"band": "mid"}, {"band": "bottom"}]


def _values(rng, n, bottom_shift=0.0, positions=64.0):
    """Per-example values of one set at one matrix; `bottom_shift` plants extra curvature and
    activation in the bottom band (a memorized direction)."""
    share = rng.dirichlet([4, 3, 2], size=n)
    share[:, 2] += bottom_shift
    share /= share.sum(1, keepdims=True)
    act = rng.lognormal(0.0, 0.2, (n, 3))
    act[:, 2] *= np.exp(3 * bottom_shift)
    total = rng.lognormal(0.0, 0.3, n) * positions
    return {
        "positions": np.full(n, positions),
        "total": total,
        "total_per_position": total / positions,
        "top_value": total * 0.1,
        "top_value_per_position": total * 0.1 / positions,
        "sharpness": rng.uniform(0.2, 0.4, n),
        "participation_ratio": rng.uniform(10, 20, n),
        "band_share": share,
        "act_kfac": act,
        "act_kfac_mu": act,
    }


def _report(memorized, clean, layers=("l0", "l1", "l2")):
    per_example = {
        sid: {
            s: {"values": v[i], "idiosyncrasy": {"top_overlap": 0.1}}
            for s, v in (("memorized", memorized), ("clean", clean))
        }
        for i, sid in enumerate(layers)
    }
    return {
        "clean": "clean",
        "layers": list(layers),
        "bands": BANDS,
        "bases": ["kfac", "kfac_mu"],
        "sets": {"memorized": {}, "clean": {}},
        "per_example": per_example,
        "ablation": {"rows": []},
    }


def _by_claim(findings):
    return {f["claim"]: f for f in findings}


def test_planted_memorized_direction_agrees():
    rng = np.random.default_rng(0)
    mem = [_values(rng, 48, bottom_shift=0.5, positions=64.0) for _ in range(3)]
    clean = [_values(rng, 64, positions=127.0) for _ in range(3)]
    f = _by_claim(build_findings(_report(mem, clean)))
    bottom = f["more of each example's curvature in the bottom band"]
    assert bottom["verdict"] == "agrees" and bottom["lo"] > 0
    assert bottom["agrees_in"] == bottom["of"] == 3 and bottom["n_set"] == 48
    act = f["stronger bottom-band activations than clean (K-FAC basis, pair-faithful)"]
    assert act["verdict"] == "agrees"
    # Different window lengths but the same curvature per position: no magnitude effect claimed
    # (the per-position normalization removes the 64-vs-127 length difference).
    mag = f["sharper in magnitude: more total curvature per loss position"]
    assert mag["verdict"] == "inconclusive"


def test_identical_sets_are_inconclusive():
    rng = np.random.default_rng(1)
    same = [_values(rng, 40) for _ in range(3)]
    findings = build_findings(_report(same, same))
    measured = [f for f in findings if f["verdict"] not in ("descriptive", "n/a")]
    assert len(measured) == 10 and all(f["verdict"] == "inconclusive" for f in measured)
    assert all(f["lo"] <= 0 <= f["hi"] for f in measured)


def test_opposite_effect_contradicts_and_intervals_are_seeded():
    rng = np.random.default_rng(2)
    x = rng.normal(-1.0, 1.0, (50, 2))
    c = rng.normal(0.0, 1.0, (60, 2))
    r = effect_sizes(x, c, "diff", +1, seed=3)
    assert r["verdict"] == "contradicts" and r["hi"] < 0
    assert effect_sizes(x, c, "diff", +1, seed=3) == r
    # the per-matrix effect is the plain difference of means
    assert np.isclose(r["per_matrix"][0]["effect"], x[:, 0].mean() - c[:, 0].mean())
