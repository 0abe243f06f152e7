"""Repeating an experiment over seeds: the one multi-seed mechanism of the project (docs/design.md
§3, "Seeds").

An experiment declares (1) how one seed runs: `run_one(seed, out_dir) -> summary`, with every
seed-dependent stage of the experiment on that seed (its `seeded(config, seed)`), and (2) which
numbers of a summary are aggregated: `measures(summary) -> nested {name: float}`. `run_seeds`
runs every seed into OUT/seed-<s>/, and reports each number's mean, sample standard deviation and
Student-t 95% interval across seeds (`stats.across_seeds`) in OUT/seeds.json and OUT/seeds.md,
beside each seed's own numbers (which carry their own per-example intervals and paired tests).

A seed whose OUT/seed-<s>/ already holds a finished summary (`summary_file`) is read back instead
of rerun, so an interrupted multi-seed run resumes where it stopped.

Users: the vision demo (`vision/seeds.py`), the LM demo (`demo/seeds.py`) and `kfac-mem compare`
(`baselines/seeds.py`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from kfac_mem.atomic import write_json_atomic, write_text_atomic
from kfac_mem.errors import InputError
from kfac_mem.manifest import run_manifest
from kfac_mem.stats import across_seeds, fmt_interval

__all__ = [
    "aggregate",
    "leaves",
    "parse_seeds",
    "render_table",
    "run_seeds",
    "seed_dir",
    "stat_rows",
]


def parse_seeds(text: str) -> list[int]:
    """ "0-4" -> [0, 1, 2, 3, 4]; "0,3,7" -> [0, 3, 7]; ranges and lists combine ("0-2,9")."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise InputError(
                f"`seeds` {text!r} is not a seed list: use e.g. 0-4 or 0,3,7."
            ) from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise InputError(f"`seeds` {text!r} must name distinct seeds >= 0, e.g. 0-4.")
    return seeds


def seed_dir(out: str, seed: int) -> str:
    """OUT/seed-<s>: where one seed's full run is written."""
    return os.path.join(out, f"seed-{seed}")


def leaves(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """{path: value} of every non-mapping leaf of a nested mapping."""
    out: dict[tuple[str, ...], Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(leaves(v, (*prefix, str(k))))
        else:
            out[(*prefix, str(k))] = v
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def aggregate(per_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """The nested measures of every seed -> the same tree with `stats.across_seeds` of each leaf
    (mean, sd, n, t 95% interval, values) over the seeds where it is a finite number; a leaf that
    is finite for no seed (NaN, None: e.g. a rate with n = 0) is left out."""
    flat = {s: leaves(m) for s, m in per_seed.items()}
    paths: list[tuple[str, ...]] = []
    for f in flat.values():
        paths += [p for p in f if p not in paths]
    out: dict[str, Any] = {}
    for path in paths:
        values = [f[path] for f in flat.values() if _finite(f.get(path))]
        if not values:
            continue
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = across_seeds(values)
    return out


def stat_rows(
    tree: Mapping[str, Any], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Mapping[str, Any]]]:
    """(path, `across_seeds` result) of every aggregated number of an `aggregate` tree."""
    for k, v in tree.items():
        if isinstance(v, Mapping) and "values" in v and "sd" in v:
            yield (*prefix, str(k)), v
        elif isinstance(v, Mapping):
            yield from stat_rows(v, (*prefix, str(k)))


def render_table(
    result: Mapping[str, Any],
    title: str,
    intro: str = "",
    scale: Callable[[tuple[str, ...]], float] | None = None,
) -> str:
    """Markdown: one row per aggregated number: mean [t 95% interval] over seeds, sd, the number
    of seeds it is defined for, and each seed's value. `scale(path)`: e.g. 100 for rates."""
    seeds = result["seeds"]
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro, ""]
    lines += [
        "| measure | mean [95% interval across seeds] | sd | seeds | per seed |",
        "|---|---|---|---|---|",
    ]
    for path, r in stat_rows(result["aggregate"]):
        f = scale(path) if scale else 1.0
        values = ", ".join(f"{f * v:.4g}" for v in r["values"])
        lines.append(
            f"| {' / '.join(path)} | {fmt_interval(r, 'mean', f, 3)} | {f * r['sd']:.3g} | "
            f"{r['n']} of {len(seeds)} | {values} |"
        )
    return "\n".join(lines) + "\n"


def run_seeds(
    seeds: Sequence[int],
    run_one: Callable[[int, str], dict[str, Any]],
    measures: Callable[[dict[str, Any]], Mapping[str, Any]],
    out: str,
    *,
    experiment: str,
    seed_fields: Sequence[str],
    render: Callable[[dict[str, Any]], str],
    keep: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    summary_file: str = "summary.json",
    command: str = "",
    extra: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run `run_one(seed, OUT/seed-<s>)` per seed and aggregate `measures` across seeds.

    Args:
      seeds: distinct seeds (`parse_seeds`). run_one: one full run of the experiment on a seed,
        writing its own files (`summary_file` among them) and returning its summary.
      measures: summary -> nested {name: number}, the numbers aggregated across seeds.
      out: the multi-seed directory (made if missing; the caller owns and locks it).
      experiment: its name in the outputs. seed_fields: which settings each seed replaces
        (recorded, e.g. ("seed",) or ("noise_seed", "model_seed", ...)).
      render: result -> seeds.md (`render_table` for a generic table).
      keep: summary -> what of it goes into seeds.json's `per_seed` (default: the measures).
      command: the command line that reproduces the run (recorded). extra: more top-level fields
        of the result (e.g. the preset).

    Returns (and writes to OUT/seeds.json): {"experiment", "seeds", "seed_fields", "command",
    "aggregate" (the measures' tree, each leaf `stats.across_seeds`), "per_seed": {seed: kept},
    "manifest", **extra}.
    """
    say = log or (lambda _: None)
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(f"`seeds` must be distinct and non-empty, got {seeds}.")
    os.makedirs(out, exist_ok=True)
    summaries: dict[int, dict[str, Any]] = {}
    for s in seeds:
        directory = seed_dir(out, s)
        done = os.path.join(directory, summary_file)
        if os.path.isfile(done):
            with open(done, encoding="utf-8") as f:
                summaries[s] = json.load(f)
            say(f"=== seed {s}: finished earlier, read back from {done}")
            continue
        say(f"=== seed {s}")
        summaries[s] = run_one(s, directory)
    result = {
        "experiment": experiment,
        "seeds": seeds,
        "seed_fields": list(seed_fields),
        "command": command,
        "aggregate": aggregate({s: measures(x) for s, x in summaries.items()}),
        "per_seed": {str(s): (keep or measures)(x) for s, x in summaries.items()},
        "manifest": run_manifest({"seeds": seeds}),
        **(extra or {}),
    }
    write_json_atomic(os.path.join(out, "seeds.json"), result)
    text = render(result)
    write_text_atomic(os.path.join(out, "seeds.md"), text)
    say(text)
    return result
