"""The paper's Table 1 comparison: K-FAC, SVD and BalancedSubnet at matched held-out perplexity.

Roles of the sets (paper §5): the memorized *train* set is BSN's forget set and the set on which
K-FAC's and SVD's configuration is chosen; the memorized *validation* set (same distribution, never
used for fitting or choosing) and an *out-of-distribution* memorized set (the paper's quotes) are
only reported; held-out text gives perplexity (the matching target) and nDCG@10; separate clean
*retain* windows feed BSN's retain loss and the relearning stress test.

Procedure per method:
1. Candidates: K-FAC and SVD edit (layers × projections) configurations (default: a paper-like
   block at ≈72–78% depth and all collected layers, gate+up); BSN has one candidate per loss weight.
   BSN candidates are loss weight × learning rate × masked projections (default: the paper's
   loss-weight space {0.1, 0.3, 0.5, 0.7, 0.9}).
2. Per candidate, `match_perplexity` searches the method's knob (K-FAC ρ, SVD drop fraction, BSN
   pruned ratio) until held-out perplexity is within ±tolerance of the target (default: 1.2 × the
   unedited perplexity, the paper's 7B K-FAC edit moved 19.04 → 22.84).
3. Among candidates, the choice is: matched before unmatched, then the lowest strict recitation on
   the memorized train set (ties: lower loose, then higher mean d/L).
4. The chosen setting is reported on every set (strict / loose / mean d/L), with perplexity,
   nDCG@10 against the unedited model, its fit time (one edit or one BSN training) and the whole
   search's time, and stress-tested (`stress.py`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from kfac_mem.baselines.bsn import BSNConfig, rows_to_windows, train_bsn
from kfac_mem.baselines.matching import match_perplexity
from kfac_mem.baselines.stress import StressOptions, stress_tests
from kfac_mem.evaluation.ndcg import baseline_rankings, ndcg_from_topk, topk_rankings
from kfac_mem.evaluation.perplexity import perplexity
from kfac_mem.evaluation.recitation import paired, recitation, summary
from kfac_mem.experiments import ChoiceRule, EditCell, edited_params

METHODS = ("kfac", "svd", "bsn")
SET_NAMES = ("train", "validation", "ood")


@dataclasses.dataclass(frozen=True)
class EditCandidate:
    """One K-FAC/SVD configuration: which layers and projections the knob is applied to."""

    layers: tuple[int, ...]
    projections: tuple[str, ...] = ("gate", "up")

    def label(self) -> str:
        return f"layers {_ranges(self.layers)} {'+'.join(self.projections)}"


@dataclasses.dataclass
class CompareSets:
    """The sets of a comparison (rows: dicts with `prefix_ids`, `suffix_ids`; windows: int [N, L]).

    Attributes:
      train: memorized train rows (BSN forget set; K-FAC/SVD configuration choice).
      validation: memorized validation rows (reported only).
      ood: out-of-distribution memorized rows, e.g. quotes (reported only; may be empty).
      text: held-out clean windows: perplexity (the matching target) and nDCG@10.
      retain: clean windows for BSN's retain loss and relearning (disjoint from `text`).
    """

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    ood: list[dict[str, Any]]
    text: np.ndarray
    retain: np.ndarray | None = None

    def memorized(self) -> dict[str, list[dict[str, Any]]]:
        return {n: getattr(self, n) for n in SET_NAMES if getattr(self, n)}


@dataclasses.dataclass(frozen=True)
class CompareOptions:
    """How the comparison is run (see module doc).

    Attributes:
      methods: any of kfac, svd, bsn.
      target_perplexity: the perplexity to match; None: `target_ratio` × the unedited perplexity.
      tolerance: relative half-width of the matching band (0.03: within ±3% of the target).
      refine: bisection steps per candidate after the grid walk.
      candidates: K-FAC/SVD configurations; None: `default_candidates`.
      rhos: K-FAC ρ grid, weakest (high ρ) first. svd_drops: SVD drop fractions, weakest first.
      bsn: BSN hyperparameters (ratio, loss weight, learning rate and projections are set by the
        sweep). bsn_ratios: pruned fractions, weakest first (the paper searched [0.001, 0.05]).
      bsn_loss_weights, bsn_learning_rates, bsn_projection_sets: BSN candidates are their product
        (defaults: the paper's loss-weight search space; `bsn`'s learning rate and projections).
      stress: stress-test settings; None skips the stress tests.
      stress_sets: which memorized sets the stress tests use.
      batch_size: rows per evaluation batch. ndcg_windows: held-out windows for nDCG (None: all).
      kfac_precompute_seconds: time of factor collection + eigendecomposition, if known (reported
        beside K-FAC's edit time; it is paid once for every ρ and configuration).
    """

    methods: tuple[str, ...] = METHODS
    target_perplexity: float | None = None
    target_ratio: float = 1.2
    tolerance: float = 0.03
    refine: int = 3
    candidates: tuple[EditCandidate, ...] | None = None
    rhos: tuple[float, ...] = (0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
    svd_drops: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
    bsn: BSNConfig = dataclasses.field(default_factory=BSNConfig)
    bsn_ratios: tuple[float, ...] = (0.001, 0.0015, 0.003, 0.01, 0.03, 0.05)
    bsn_loss_weights: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    bsn_learning_rates: tuple[float, ...] | None = None
    bsn_projection_sets: tuple[tuple[str, ...], ...] | None = None
    stress: StressOptions | None = dataclasses.field(default_factory=StressOptions)
    stress_sets: tuple[str, ...] = ("validation", "ood")
    batch_size: int = 32
    ndcg_windows: int | None = None
    kfac_precompute_seconds: float | None = None

    def __post_init__(self):
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"`methods` must be a non-empty subset of {METHODS}, got {bad}.")
        if self.target_perplexity is None and not self.target_ratio > 0:
            raise ValueError(f"`target_ratio` must be > 0, got {self.target_ratio}.")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"`tolerance` must be in [0, 1), got {self.tolerance}.")
        bad_sets = [s for s in self.stress_sets if s not in SET_NAMES]
        if bad_sets:
            raise ValueError(f"`stress_sets` must be among {SET_NAMES}, got {bad_sets}.")


def default_candidates(num_layers: int, collected: Sequence[int] | None = None) -> tuple:
    """A paper-like block (OLMo-2 7B: layers 23–25 of 32, i.e. from ≈72% depth, 3/32 of the
    layers) and all layers, both gate+up; restricted to `collected` layers when given."""
    start = min(num_layers - 1, round(23 / 32 * num_layers))
    count = max(1, round(3 / 32 * num_layers))
    allowed = set(range(num_layers) if collected is None else collected)
    out = []
    for layers in (range(start, min(num_layers, start + count)), range(num_layers)):
        chosen = tuple(i for i in layers if i in allowed)
        if chosen and EditCandidate(chosen) not in out:
            out.append(EditCandidate(chosen))
    if not out:
        raise ValueError("No layer is available for K-FAC/SVD edits (none collected?).")
    return tuple(out)


def _ranges(idx: Sequence[int]) -> str:
    idx = sorted(idx)
    if idx and idx == list(range(idx[0], idx[-1] + 1)) and len(idx) > 2:
        return f"{idx[0]}-{idx[-1]}"
    return ",".join(map(str, idx))


# Among the candidates of a method: matched perplexity first, then the lowest train recitation
# (strict, loose, then the largest mean distance).
CANDIDATE_RULE = ChoiceRule(
    objective=("-match.matched", "train.strict", "train.loose", "-train.mean_distance")
)


class _Comparison:
    """State of one `compare` call (model, sets, options, baseline numbers, log)."""

    def __init__(self, model, eigen, sets: CompareSets, options: CompareOptions, log):
        self.model, self.eigen, self.sets, self.o = model, eigen, sets, options
        self.say = log or (lambda _: None)
        self.sites = model.linear_sites()

    def ppl(self, params) -> float:
        return perplexity(self.model, self.sets.text, params, self.o.batch_size)["perplexity"]

    def recite(self, rows, params) -> dict[str, Any]:
        res = recitation(self.model, rows, params, self.o.batch_size, include_rows=False)
        return summary(res)

    # --- one evaluate(knob) per method ---------------------------------------------------------

    def edit_fn(self, method: str, cand: EditCandidate) -> Callable[[float], tuple]:
        def evaluate(knob: float):
            t0 = time.perf_counter()
            cell = EditCell(tuple(cand.layers), tuple(cand.projections), knob)
            params = edited_params(self.model, self.eigen, cell, method)
            jax.block_until_ready(params)
            seconds = time.perf_counter() - t0
            return self.ppl(params), params, seconds

        return evaluate

    def bsn_fn(self, setting: dict[str, Any]) -> Callable[[float], tuple]:
        forget = rows_to_windows(self.sets.train)

        def evaluate(ratio: float):
            config = dataclasses.replace(
                self.o.bsn,
                ratio=ratio,
                loss_weight=setting["loss_weight"],
                learning_rate=setting["learning_rate"],
                projections=tuple(setting["projections"]),
            )
            result = train_bsn(self.model, forget, self.sets.retain, config, log=None)
            return self.ppl(result.params), result.params, result.seconds

        return evaluate

    # --- the search ----------------------------------------------------------------------------

    def run_method(self, method: str, target: float) -> dict[str, Any]:
        t0 = time.perf_counter()
        if method == "bsn":
            if self.sets.retain is None:
                raise ValueError("BSN needs clean retain windows (`retain` of the sets).")
            settings = [
                {"projections": list(p), "loss_weight": w, "learning_rate": lr}
                for p in self.o.bsn_projection_sets or (self.o.bsn.projections,)
                for w in self.o.bsn_loss_weights
                for lr in self.o.bsn_learning_rates or (self.o.bsn.learning_rate,)
            ]
            specs = [(s, self.bsn_fn(s)) for s in settings]
            grid, knob_name = self.o.bsn_ratios, "ratio"
        else:
            if method == "kfac" and self.eigen is None:
                raise ValueError("K-FAC needs an eigen run (`eigen`).")
            cands = self.o.candidates or default_candidates(
                self.model.config.num_layers,
                None
                if self.eigen is None
                else sorted({s.layer for s in self.eigen.sites.values()}),
            )
            specs = [
                (
                    {"layers": list(c.layers), "projections": list(c.projections)},
                    self.edit_fn(method, c),
                )
                for c in cands
            ]
            grid, knob_name = (
                (self.o.rhos, "rho") if method == "kfac" else (self.o.svd_drops, "drop")
            )
        candidates, matches = [], []
        for setting, evaluate in specs:
            self.say(f"  {method} {setting}:")
            m = match_perplexity(
                evaluate, grid, target, self.o.tolerance, self.o.refine, self.say, knob_name
            )
            rec = self.recite(self.sets.train, m.payload)
            row = {"setting": {**setting, knob_name: m.knob}, "match": m.summary(), "train": rec}
            candidates.append(row)
            matches.append(m)
            self.say(
                f"  -> {knob_name} {m.knob:.6g}: perplexity {m.perplexity:.4f} "
                f"({'matched' if m.matched else 'UNMATCHED'}), train strict {rec['strict']:.3f}"
            )
        best = CANDIDATE_RULE.index(candidates)
        row, m = candidates[best], matches[best]
        return {
            "setting": row["setting"],
            "matched": m.matched,
            "perplexity": m.perplexity,
            "params": m.payload,
            "fit_seconds": m.seconds,
            "sweep_seconds": time.perf_counter() - t0,
            "candidates": candidates,
        }


def compare(
    model,
    eigen,
    sets: CompareSets,
    options: CompareOptions = CompareOptions(),
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Run the Table-1 comparison (see module doc) on `model` (a placed `LanguageModel`).

    Args:
      model: the unedited model. eigen: its eigen run (`load_eigen`; None if K-FAC is not run).
      sets: the memorized sets, held-out text and retain windows.
      options: methods, matching target and tolerance, grids, stress settings.
      log: progress printer (None: silent).

    Returns:
      {"target": {perplexity, baseline_perplexity, ratio, tolerance},
       "methods": {"baseline" | "kfac" | "svd" | "bsn": {
           "setting", "matched", "perplexity", "ndcg", "recitation": {set: {n, strict, loose,
           mean_distance}}, "fit_seconds", "sweep_seconds", "candidates", "stress"}},
       "params": {method: parameter tree of the chosen setting} (not JSON; drop before saving),
       "paired": {"kfac_vs_bsn" | ...: {set: paired differences + McNemar}} (`paired_methods`),
       "options", "seconds"}. Every recitation number carries n, "intervals" (95%) and per-row
       "outcomes".
    """
    t_start = time.perf_counter()
    say = log or (lambda _: None)
    if not sets.train:
        raise ValueError(
            "The memorized train set is empty; it is BSN's forget set and the K-FAC/SVD tuning set."
        )
    c = _Comparison(model, eigen, sets, options, say)
    memorized = sets.memorized()
    base_ppl = c.ppl(model.params)
    target = options.target_perplexity or options.target_ratio * base_ppl
    say(f"unedited perplexity {base_ppl:.4f}; target {target:.4f} ± {options.tolerance:.1%}")
    ndcg_text = np.asarray(sets.text)[: options.ndcg_windows]
    base_top, _, _ = baseline_rankings(model, ndcg_text, model.params, 10, options.batch_size, "")
    methods: dict[str, dict[str, Any]] = {
        "baseline": {
            "setting": None,
            "matched": None,
            "perplexity": base_ppl,
            "params": model.params,
            "fit_seconds": 0.0,
            "sweep_seconds": 0.0,
        }
    }
    for method in options.methods:
        say(f"[{method}]")
        methods[method] = c.run_method(method, target)
    stress_rows = {n: memorized[n] for n in options.stress_sets if n in memorized}
    for name, res in methods.items():
        params = res["params"]
        res["recitation"] = {n: c.recite(rows, params) for n, rows in memorized.items()}
        top = topk_rankings(model, ndcg_text, params, 10, options.batch_size)
        res["ndcg"] = float(ndcg_from_topk(top, base_top).mean())
        if options.stress is not None and stress_rows:
            say(f"[stress] {name}")
            res["stress"] = stress_tests(
                model, params, stress_rows, sets.text, sets.retain, options.stress
            )
        say(_line(name, res))
    paired = paired_methods(methods)
    return {
        "target": {
            "perplexity": target,
            "baseline_perplexity": base_ppl,
            "ratio": target / base_ppl,
            "tolerance": options.tolerance,
        },
        "methods": {n: {k: v for k, v in r.items() if k != "params"} for n, r in methods.items()},
        "params": {n: r["params"] for n, r in methods.items()},
        "options": _jsonable(dataclasses.asdict(options)),
        "sets": {
            **{n: len(rows) for n, rows in memorized.items()},
            "text_windows": int(np.asarray(sets.text).shape[0]),
            "retain_windows": None
            if sets.retain is None
            else int(np.asarray(sets.retain).shape[0]),
        },
        "paired": paired,
        "seconds": time.perf_counter() - t_start,
    }


def paired_methods(methods: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every pair of methods (first − second) on every memorized set, on the same rows: paired
    differences of strict, loose and mean d/L with 95% intervals, exact McNemar for strict and
    loose (`recitation.paired`). Keys "kfac_vs_bsn", ...; K-FAC first when present."""
    order = [m for m in ("kfac", "bsn", "svd", "baseline") if m in methods]
    order += [m for m in methods if m not in order]
    out: dict[str, Any] = {}
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            out[f"{a}_vs_{b}"] = {
                s: paired(methods[a]["recitation"][s], methods[b]["recitation"][s])
                for s in methods[a]["recitation"]
                if s in methods[b]["recitation"]
            }
    return out


def _line(name: str, res: dict[str, Any]) -> str:
    rec = " ".join(
        f"{n} {r['strict']:.2f}/{r['loose']:.2f}/{r['mean_distance']:.2f}"
        for n, r in res["recitation"].items()
    )
    return f"  {name}: {rec}  ppl {res['perplexity']:.3f}  nDCG {res['ndcg']:.3f}"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x
