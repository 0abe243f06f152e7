"""`kfac-mem merge`: one factor run from several, their exact sums and token counts added.

Example:
  kfac-mem merge factors-shard0/ factors-shard1/ --out factors-all/

The runs must share the model (weights' fingerprint), the layers, the label mode and the
accumulation dtype. Merging is for disjoint corpora or shards of one corpus, and for sampled-label
runs over the same windows with different seeds; two runs over overlapping windows of one corpus
with the same labels are refused (they would count those windows twice). The merged directory is
a factor run that decompose reads like any other; its metadata.json lists the source runs
(docs/design.md §5.2).
"""

from __future__ import annotations

import argparse
import time

from kfac_mem.cli import common


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="merge factor runs (exact sums and token counts)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="RUN", help="factor run directories (two or more)")
    p.add_argument(
        "--out",
        required=True,
        help="merged factor run directory (new or empty, or an earlier merge with --overwrite)",
    )
    p.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="also merge runs whose collection did not finish",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier merge at --out")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kfac_mem.collection.merge import merge_factor_runs

    def write_config():  # only once every check has passed
        common.write_resolved_config(args.out, "merge", args, {"sources": list(args.paths)})

    t0 = time.time()
    merged = merge_factor_runs(
        args.paths,
        args.out,
        allow_incomplete=args.allow_incomplete,
        overwrite=args.overwrite,
        before_write=write_config,
    )
    print(
        f"merged {len(args.paths)} runs: {merged.n_tokens:,} positions for {len(merged)} layers "
        f"(mode={merged.mode}, complete={merged.complete}) in {time.time() - t0:.1f} s"
    )
    print(f"factors written to {merged.directory}")
    return 0
