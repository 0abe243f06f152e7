"""kfac_mem.stats against closed forms and brute force."""

import itertools
import math

import numpy as np
import pytest

from kfac_mem import stats


def _wilson_closed_form(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(0, 10), (5, 10), (13, 13), (3, 48), (1, 1)])
def test_wilson_matches_closed_form(k, n):
    lo, hi = stats.wilson(k, n)
    elo, ehi = _wilson_closed_form(k, n)
    assert lo == pytest.approx(max(0.0, elo), abs=1e-9)
    assert hi == pytest.approx(min(1.0, ehi), abs=1e-9)
    r = stats.proportion([1] * k + [0] * (n - k))
    assert (r["k"], r["n"]) == (k, n) and r["lo"] <= r["rate"] <= r["hi"]


def test_wilson_known_value_and_empty():
    lo, hi = stats.wilson(0, 10)  # the textbook value
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert stats.proportion(0, 0)["rate"] is None
    with pytest.raises(ValueError, match="0/1"):
        stats.proportion([0.5, 1.0])


def test_mcnemar_equals_brute_force_binomial():
    rng = np.random.default_rng(3)
    for _ in range(20):
        a = rng.random(30) < rng.random()
        b = rng.random(30) < rng.random()
        r = stats.mcnemar(a, b)
        x, d = r["a_only"], r["a_only"] + r["b_only"]
        # two-sided exact: sum of outcomes no likelier than the observed one under Bin(d, 1/2)
        pmf = [math.comb(d, i) / 2**d for i in range(d + 1)]
        brute = min(1.0, sum(p for p in pmf if p <= pmf[x] * (1 + 1e-7))) if d else 1.0
        assert r["p_value"] == pytest.approx(brute, rel=1e-9)
    # 6 discordant pairs all one way: p = 2 / 2^6
    r = stats.mcnemar([0] * 6 + [1] * 4, [1] * 6 + [1] * 4)
    assert (r["a_only"], r["b_only"]) == (0, 6) and r["p_value"] == pytest.approx(1 / 32)


def test_mcnemar_bounds_cover_every_pairing_of_the_marginals():
    n, k_a, k_b = 12, 7, 4
    a = [1] * k_a + [0] * (n - k_a)
    seen = []
    for ones in itertools.combinations(range(n), k_b):  # every pairing of the marginals
        b = [int(i in ones) for i in range(n)]
        seen.append(stats.mcnemar(a, b)["p_value"])
    lo, hi = stats.mcnemar_bounds(k_a, k_b, n)
    assert lo == pytest.approx(min(seen)) and hi == pytest.approx(max(seen))
    # one method at 0: the table is determined, the bounds coincide with the exact test
    assert stats.mcnemar_bounds(0, 26, 36) == pytest.approx((2 / 2**26, 2 / 2**26))
    with pytest.raises(ValueError, match="k_a, k_b"):
        stats.mcnemar_bounds(5, 1, 4)


def test_bootstrap_mean_matches_brute_force_percentiles():
    x = np.random.default_rng(0).exponential(size=40)
    r = stats.bootstrap_mean(x, seed=1)
    rng = np.random.default_rng(123)
    means = x[rng.integers(0, x.size, (20000, x.size))].mean(axis=1)
    blo, bhi = np.percentile(means, [2.5, 97.5])
    assert r["mean"] == pytest.approx(x.mean())
    assert r["lo"] == pytest.approx(blo, abs=0.05) and r["hi"] == pytest.approx(bhi, abs=0.05)
    assert stats.bootstrap_mean(x, seed=1) == r  # seeded
    const = stats.bootstrap_mean([0.25] * 7)
    assert const["lo"] == const["hi"] == 0.25


def test_bootstrap_ratio_is_paired_and_exact_on_full_enumeration():
    # n = 3: enumerate all 27 resamples; the percentile interval lies within their ratio range
    a, b = np.array([1.0, 0.0, 1.0]), np.array([1.0, 1.0, 1.0])
    r = stats.bootstrap_ratio(a, b, seed=0)
    ratios = [a[list(i)].mean() / b[list(i)].mean() for i in itertools.product(range(3), repeat=3)]
    assert r["ratio"] == pytest.approx(2 / 3)
    assert min(ratios) <= r["lo"] <= r["ratio"] <= r["hi"] <= max(ratios)
    assert stats.bootstrap_ratio([1, 1], [0, 0])["ratio"] is None


def test_bootstrap_ratio_rare_zero_denominator_resamples_keep_finite_bounds():
    # 7 of 100 successes before, 3 other items after: P(a resample misses all 7) = 0.93^100 ≈ 7e-4,
    # far below the 2.5% tail, so both bounds are finite and bracket the point estimate; with
    # 1 of 10 before that probability is 0.35, so the upper bound is open-ended (None)
    before, after = np.zeros(100), np.zeros(100)
    before[:7], after[50:53] = 1, 1
    r = stats.bootstrap_ratio(after, before, seed=0)
    assert r["lo"] is not None and r["hi"] is not None
    assert r["ratio"] == pytest.approx(3 / 7) and 0 <= r["lo"] <= r["ratio"] <= r["hi"]
    rare = stats.bootstrap_ratio(np.eye(10)[5], np.eye(10)[0], seed=0)
    assert rare["lo"] == 0 and rare["hi"] is None


def test_paired_difference_and_compare():
    same = stats.compare_paired([1, 0, 1, 1], [1, 0, 1, 1])
    assert same["difference"] == 0 and same["lo"] == same["hi"] == 0
    assert not same["excludes_zero"] and same["mcnemar"]["p_value"] == 1.0
    a, b = np.zeros(30), np.ones(30)
    d = stats.compare_paired(a, b)
    assert d["difference"] == -1 and d["excludes_zero"] and d["mcnemar"]["b_only"] == 30
    assert "McNemar p" in stats.fmt_diff(d)


def test_across_seeds_t_interval():
    r = stats.across_seeds([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t_{0.975, 4}
    assert r["mean"] == 3.0 and r["sd"] == pytest.approx(math.sqrt(2.5))
    assert r["lo"] == pytest.approx(3 - half) and r["hi"] == pytest.approx(3 + half)
    assert stats.fmt_interval(r, "mean") == f"3.0 [{3 - half:.1f}, {3 + half:.1f}]"


def test_run_manifest_records_versions_devices_seeds_and_commit(tmp_path):
    import argparse

    import jax
    import yaml

    from kfac_mem.cli.common import write_resolved_config
    from kfac_mem.manifest import run_manifest

    m = run_manifest({"labels": 3})
    assert m["packages"]["jax"] == jax.__version__ and m["seeds"] == {"labels": 3}
    assert m["jax"]["device_count"] == jax.device_count()
    assert m["jax"]["process_count"] == jax.process_count()
    assert m["jax"]["backend"] == jax.default_backend()
    assert m["git"] is None or len(m["git"]["commit"]) == 40
    args = argparse.Namespace(seed=7, split_seed=2, out=str(tmp_path))
    with open(write_resolved_config(str(tmp_path), "mine", args)) as f:
        doc = yaml.safe_load(f)
    assert doc["manifest"]["seeds"] == {"seed": 7, "split_seed": 2}
    assert doc["manifest"]["packages"]["scipy"] is not None


def test_vision_seed_list_and_aggregate():
    from kfac_mem.vision.demo import VisionDemoConfig
    from kfac_mem.vision.seeds import aggregate, parse_seeds, render, seeded

    assert parse_seeds("0-4") == [0, 1, 2, 3, 4] and parse_seeds("0-1,7") == [0, 1, 7]
    for bad in ("4-0", "a", "1,1", ""):
        with pytest.raises(ValueError, match="seeds"):
            parse_seeds(bad)
    c = seeded(VisionDemoConfig.vit_tiny(), 3)
    assert (c.noise_seed, c.model_seed, c.split_seed, c.factor_seed) == (3, 3, 3, 3)
    assert (
        c.data_seed == VisionDemoConfig.vit_tiny().data_seed
    )  # same validation images for every seed

    def summary(mem_after):
        rates = {"noisy_label_memorized": 0.6, "true_label_recovered": 0.3, "val_accuracy": 0.9}
        ci = {m: stats.proportion(round(v * 20), 20) for m, v in rates.items()}
        after = {**rates, "noisy_label_memorized": mem_after}
        diff = {m: {"difference": after[m] - rates[m], "mcnemar": {"p_value": 0.01}} for m in rates}
        return {
            "rows": {
                "before": {**rates, "intervals": ci},
                "kfac": {**after, "intervals": ci},
                "svd": {**rates, "intervals": ci},
            },
            "paired_tests": {"kfac_vs_before": diff, "kfac_vs_svd": diff},
            "chosen": {"layers": [0], "projections": ["fc1"], "rho": 0.9},
        }

    per = {s: summary(v) for s, v in zip(range(3), (0.2, 0.3, 0.4))}
    agg = aggregate(per)
    r = agg["rates"]["kfac"]["noisy_label_memorized"]
    assert r["mean"] == pytest.approx(0.3) and r["sd"] == pytest.approx(0.1) and r["n"] == 3
    d = agg["differences"]["kfac_vs_before"]["noisy_label_memorized"]
    assert d["mean"] == pytest.approx(-0.3) and d["hi"] < 0
    md = render(
        {
            "preset": "t",
            "seeds": [0, 1, 2],
            "command": "x",
            "aggregate": agg,
            "per_seed": {str(s): v for s, v in per.items()},
        }
    )
    assert "30.0 [" in md and "(n = 20 per seed)" in md
