"""`kfac-mem evaluate`: recitation, perplexity, nDCG and task groups for a model -> results.json.

Every requested suite is checked before any runs (memorized sets readable, text sources present
and tokenizable, task files installed, a tokenizer where text is needed); a perplexity text that
the model's provenance says it was trained or fine-tuned on is warned about on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys

from kfac_mem.cli.common import (
    add_mesh_flags,
    add_model_flags,
    init_distributed,
    load_model,
    mesh_from_args,
    parse_named,
    path_inputs,
    write_resolved_config,
)


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        name,
        help="evaluate memorization, perplexity, nDCG and task groups",
        description="Run the evaluation suites on --model (optionally against --baseline, the "
        "unedited model) and write DIR/results.json plus a per-example jsonl per "
        "memorized set.",
    )
    add_model_flags(p)
    p.add_argument(
        "--baseline",
        default=None,
        help="the unedited model (same forms as --model): enables nDCG, baseline "
        "columns and task retention (after / before)",
    )
    p.add_argument(
        "--memorized",
        action="append",
        default=[],
        metavar="NAME=FILE.jsonl",
        help="memorized-window set (jsonl rows with prefix_ids, suffix_ids); repeatable",
    )
    p.add_argument(
        "--text",
        action="append",
        default=[],
        metavar="FILE",
        help="held-out text for perplexity/nDCG: .txt, .jsonl[.gz] (field --text-field), "
        ".npy [N, L] token ids, or a bundled corpus name (coqa, lambada); repeatable; default "
        "coqa (CoQA passages, which no demo trains on; the demos train on lambada, and a text "
        "the model's provenance says it was tuned on gets a warning)",
    )
    p.add_argument(
        "--text-field", default="text", help="jsonl field holding the text (default text)"
    )
    p.add_argument("--window", type=int, default=128, help="tokens per perplexity/nDCG window")
    p.add_argument(
        "--suites",
        default=None,
        help="comma-separated subset of recitation,perplexity,ndcg,tasks; each named suite must "
        "be able to run (checked before any runs). Default: every suite the inputs allow "
        "(recitation needs --memorized, ndcg --baseline, text and tasks a tokenizer)",
    )
    p.add_argument(
        "--tasks",
        default="all",
        help="task groups (arithmetic, closed_book, open_book, logic) and/or task names",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most N rows per memorized set, windows per text, examples per task",
    )
    p.add_argument("--batch-size", type=int, default=8, help="rows per forward (default 8)")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="token budget per task request (default min(model context, 2048))",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where nDCG baseline rankings are cached (default $KFAC_MEM_CACHE/ndcg or "
        "~/.cache/kfac_mem/ndcg; '' disables)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_mesh_flags(p)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from kfac_mem.cli import flag_message
    from kfac_mem.evaluation import format_table, read_memorized
    from kfac_mem.evaluation.runner import parse_suites, plan_evaluation
    from kfac_mem.evaluation.tasks import resolve_tasks
    from kfac_mem.rundir import check_output, claim

    check_output(args.out, "evaluation", inputs=path_inputs(args))
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}.")
    suites = None if args.suites is None else parse_suites(args.suites)
    if suites is None or "tasks" in suites:
        resolve_tasks(args.tasks)  # fail on a bad name before loading anything
    memorized = parse_named(args.memorized, "--memorized")
    for path in memorized.values():
        read_memorized(path)  # fail on a malformed file before loading any model
    init_distributed(args)
    mesh, rules = mesh_from_args(args)
    model = load_model(args, mesh, rules)
    baseline = load_model(args, mesh, rules, path=args.baseline) if args.baseline else None
    plan = plan_evaluation(  # every requested suite's inputs, before any suite runs
        model,
        baseline=baseline,
        memorized=memorized,
        texts=args.text or None,
        suites=suites,
        tasks=args.tasks,
        window=args.window,
    )
    for warning in plan.warnings:
        print(
            f"kfac-mem evaluate: warning: {flag_message(warning, 'evaluate', args)}",
            file=sys.stderr,
        )
    out_claim = claim(args.out, "evaluation", inputs=path_inputs(args))
    with out_claim:
        write_resolved_config(args.out, "evaluate", args)
        results = _evaluate(args, model, baseline, memorized, suites)
    print(flag_message(format_table(results), "evaluate", args))
    print(f"wrote {os.path.join(args.out, 'results.json')}")
    return 0


def _evaluate(args, model, baseline, memorized, suites):
    from kfac_mem.evaluation import run_evaluation

    return run_evaluation(
        model,
        baseline=baseline,
        memorized=memorized,
        texts=args.text or None,
        suites=suites,
        tasks=args.tasks,
        limit=args.limit,
        out_dir=args.out,
        batch_size=args.batch_size,
        window=args.window,
        max_length=args.max_length,
        cache_dir=args.cache_dir,
        text_field=args.text_field,
    )
