"""Extraction attacks and membership inference against (edited) models: is the text really gone?

Library entry point:

    run_audit(model, baseline, memorized={name: rows}, clean=windows, out_dir=..., options=...)

One module per attack: `sampling` (k seeded samples per prefix and temperature), `beam` (beam
search; rank and log-probability of the true suffix against the baseline), `prefix` (shorter,
shifted and token-dropout prompts), `membership` (loss, zlib, min-k%, reference-model AUC),
`relearning` (fine-tuning on clean text / a disjoint memorized subset); `scoring` (exact / loose /
longest match), `report` (report.md, results.json, figures), `runner` (`run_audit`).
"""

from kfac_mem.audit.options import ATTACKS as ATTACKS
from kfac_mem.audit.options import AuditOptions as AuditOptions
from kfac_mem.audit.runner import run_audit as run_audit

__all__ = ["ATTACKS", "AuditOptions", "run_audit"]
