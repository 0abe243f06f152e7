"""Markdown rendering of a plan (the JSON form is `run_plan`'s dict as is)."""

from __future__ import annotations

from typing import Any

GIB = 1 << 30


def _gib(x: float | None) -> str:
    return "—" if x is None else f"{x / GIB:.2f}"


def _t(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def plan_markdown(plan: dict[str, Any]) -> str:
    chip = plan["chip"]
    hbm = "no HBM budget (CPU)" if chip is None else f"{chip['hbm_bytes'] / GIB:.0f} GiB HBM/chip"
    lines = [
        f"# plan: {plan['stage']} — {plan['model']} on {plan['topology']}"
        + (f" × {plan['num_slices']} slices" if plan["num_slices"] > 1 else ""),
        "",
        f"{plan['devices']} {plan['device_kind']} devices ({plan['processes']} hosts), {hbm}; "
        f"mesh `{plan['mesh']}` {plan['mesh_shape']}; {plan['parameters'] / 1e9:.2f} B parameters "
        f"({plan['model_config']['param_dtype']} storage, {plan['model_config']['dtype']} compute); "
        f"sequence {plan['seq_len']}; {len(plan['sites'])} sites.",
        "",
        "Compiled (per device, from the compiler's memory and cost analyses):",
        "",
        "| program | batch | args GiB | out GiB | temp GiB | total GiB | fits | GFLOP | GB accessed "
        "| collectives (kind ×count, MiB) | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in plan["programs"]:
        c = p.get("compiled")
        if c is None:
            lines.append(f"| {p['name']} | {p['batch_size']} | | | | | no | | | {p['error']} | |")
            continue
        coll = (
            ", ".join(
                f"{k} ×{v['count']} ({v['bytes'] / (1 << 20):.1f})"
                for k, v in c["collectives"].items()
            )
            or "none"
        )
        fits = "—" if p["fits"] is None else ("yes" if p["fits"] else "**no**")
        lines.append(
            f"| {p['name']} | {p['batch_size'] or '—'} | {_gib(c['argument_bytes'])} | "
            f"{_gib(c['output_bytes'])} | {_gib(c['temp_bytes'])} | {_gib(c['total_bytes'])} | {fits} | "
            f"{(c['flops'] or 0) / 1e9:.1f} | {(c['bytes_accessed'] or 0) / 1e9:.2f} | {coll} | "
            f"{c['compile_seconds']:.1f} |"
        )
    notes = [
        f"- {p['name']} (batch {p['batch_size'] or '—'}): {p['note']}"
        for p in plan["programs"]
        if p.get("note")
    ]
    if notes:
        lines += ["", "What each program is:", "", *notes]
    rc = plan.get("reduce_choice")
    if rc:
        per = "; ".join(
            f"{m}: {'fits' if v['fits'] else ('no budget' if v['fits'] is None else 'does not fit')}"
            + (f", {_gib(v['total_bytes'])} GiB" if v["total_bytes"] is not None else "")
            + (
                f", largest batch {v['largest_fitting_batch']}"
                if v["largest_fitting_batch"] is not None
                else ""
            )
            for m, v in rc["modes"].items()
        )
        lines += ["", f"Reduce mode: **{rc['chosen']}** ({rc['why']}). Compiled: {per}."]
    s = plan.get("batch_search")
    if s:
        tried = ", ".join(f"{t['batch_size']}:{'fits' if t['fits'] else 'no'}" for t in s["tried"])
        best = s["largest_fitting_batch"]
        lines += [
            "",
            f"Largest batch that fits (multiples of {s['multiple_of']}, searched by compiling): "
            f"**{best if best is not None else 'none tried fits'}**"
            + ("" if s["complete"] else " (not bracketed: the search stopped at its compile limit)")
            + f". Tried: {tried}.",
        ]
    est = [p for p in plan["programs"] if p.get("estimate")]
    if est:
        lines += [
            "",
            "ESTIMATE (roofline at the chip's peak bf16 FLOP/s, HBM and ICI bandwidth, perfect "
            "overlap: a lower bound on time, not a measurement):",
            "",
            "| program | batch | step | bound by | tokens/s | time for budget |",
            "|---|---|---|---|---|---|",
        ]
        for p in est:
            e = p["estimate"]
            tps = e.get("tokens_per_second")
            lines.append(
                f"| {p['name']} | {p['batch_size'] or '—'} | {_t(e['step_seconds'])} | {e['bound_by']} | "
                f"{'—' if tps is None else f'{tps:,.0f}'} | "
                + (
                    "—"
                    if tps is None
                    else f"{_t(e['budget_seconds'])} for {e['budget_tokens'] / 1e6:.0f}M tokens"
                )
                + " |"
            )
        lines += ["", f"Chip figures: {plan['chip']['source']}."]
    lines.append("")
    return "\n".join(lines)
