"""Summarize docs/scale/*/plan.json (written by scripts/plan_scale.sh) as one markdown table.

Usage: python scripts/scale_table.py [DIR]   (default docs/scale)
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys

GIB = 1 << 30


def short_error(error: str) -> str:
    """The compiler's out-of-memory message reduced to 'out of memory: used X of Y'."""
    used = re.search(r"Used (\S+) of (\S+) hbm", error)
    return f"out of memory: {used[1]} of {used[2]}" if used else error


def rows(directory: str):
    for path in sorted(glob.glob(os.path.join(directory, "*", "plan.json"))):
        with open(path) as f:
            plan = json.load(f)
        name = os.path.basename(os.path.dirname(path))
        for p in plan["programs"]:
            c, e = p.get("compiled"), p.get("estimate") or {}
            topo = plan["topology"] + (f" ×{plan['num_slices']}" if plan["num_slices"] > 1 else "")
            hbm = plan["chip"]["hbm_bytes"] / GIB if plan["chip"] else None
            s = plan.get("batch_search") or {}
            reduce = (plan.get("reduce_choice") or {}).get("chosen")
            program = p["name"] + (f" ({reduce})" if reduce else "")
            yield (
                f"| {name} | {program} | {topo} ({plan['devices']} chips, {plan['processes']} hosts) "
                f"| {plan['mesh']} {plan['mesh_shape']} | {p['batch_size'] or '—'} "
                + (
                    f"| {c['argument_bytes'] / GIB:.2f} | {c['temp_bytes'] / GIB:.2f} | "
                    f"{c['total_bytes'] / GIB:.2f} / {hbm:.0f} | {'yes' if p['fits'] else '**no**'} | "
                    f"{c['flops'] / 1e12:.2f} | {c['compile_seconds']:.0f} "
                    if c
                    else f"| | | | **no** ({short_error(p['error'])}) | | "
                )
                + f"| {s.get('largest_fitting_batch', '—') if s else '—'} "
                + (
                    f"| {e['step_seconds'] * 1e3:.1f} ms ({e['bound_by']}) | "
                    + (
                        f"{e['tokens_per_second']:,.0f} | {e['budget_seconds'] / 60:.1f} min |"
                        if "tokens_per_second" in e
                        else "— | — |"
                    )
                    if e
                    else "| — | — | — |"
                )
            )


def main() -> None:
    directory = sys.argv[1] if len(sys.argv) > 1 else "docs/scale"
    print(
        "| row | program | topology | mesh | batch | args GiB | temp GiB | total / HBM GiB | fits "
        "| TFLOP/step | compile s | largest batch | est. step | est. tokens/s | est. 20M tokens |"
    )
    print("|" + "---|" * 15)
    for r in rows(directory):
        print(r)


if __name__ == "__main__":
    main()
