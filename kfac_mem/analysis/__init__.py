"""The sharp-vs-flat direction analyzer (docs/design.md §4; `kfac-mem analyze`).

    from kfac_mem.analysis import AnalyzeOptions, analyze
    report = analyze(model, "runs/eigen", {"memorized": rows, "clean": "held_out.txt"},
                     clean="clean", out_dir="runs/analysis", options=AnalyzeOptions(top_k=32))

spectrum      population spectra (λ, μ, cumulative Π mass, ρ cuts)
bands         Π-percentile bands (the edit's ranking), activation band weights
per_example   Γ̃_n = (g_n U_G)ᵀ(a_n U_A) statistics in row blocks (pure jnp)
step          the jitted, mesh-sharded per-batch step
example_pass  every set through the step, batch by batch (arrays written as they come)
summary       per-set distributions, idiosyncrasy, activation strengths
ekfac         EK-FAC corrected eigenvalues (diagnostics, saved into the eigen run)
ablation      band ablation through the edit's band control
store         per-example arrays in tensorstore zarr
findings      the paper's claim checked against the measured numbers
report, figures   report.json, report.md, PNGs
runner        `analyze`
"""

from kfac_mem.analysis.bands import BANDS as BANDS
from kfac_mem.analysis.options import AnalyzeOptions as AnalyzeOptions
from kfac_mem.analysis.report import read_report as read_report
from kfac_mem.analysis.runner import analyze as analyze
from kfac_mem.analysis.sets import ExampleSet as ExampleSet
from kfac_mem.analysis.sets import as_example_set as as_example_set
from kfac_mem.analysis.store import open_arrays as open_arrays

__all__ = [
    "BANDS",
    "AnalyzeOptions",
    "ExampleSet",
    "analyze",
    "as_example_set",
    "open_arrays",
    "read_report",
]
