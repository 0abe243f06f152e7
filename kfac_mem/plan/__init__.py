"""`kfac-mem plan`: ahead-of-time compiled memory, cost and collectives of each pipeline stage on
a TPU topology (compile-only devices) or this host's CPUs, with a roofline estimate of step time.
"""

from kfac_mem.plan.chips import CHIPS, Chip, chip_for
from kfac_mem.plan.devices import build_mesh, topology_devices
from kfac_mem.plan.planner import PlanRequest, largest_batch, roofline, run_plan
from kfac_mem.plan.report import plan_markdown
from kfac_mem.plan.stages import STAGES, StageProgram, abstract_model

__all__ = [
    "CHIPS",
    "STAGES",
    "Chip",
    "PlanRequest",
    "StageProgram",
    "abstract_model",
    "build_mesh",
    "chip_for",
    "largest_batch",
    "plan_markdown",
    "roofline",
    "run_plan",
    "topology_devices",
]
