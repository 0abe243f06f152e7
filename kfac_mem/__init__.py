"""kfac_mem: K-FAC curvature analysis and removal of memorization, in JAX.

The pipeline's stages as library calls (each is what the `kfac-mem` subcommand of the same name
runs): `make_mesh` → `select_sites` → `collect` (+ `merge_factor_runs`) → `load_factors` →
`decompose_run` → `load_eigen` → `parse_plan` / `plan_from_flags` + `apply_plan` (the edit) →
`mine`, `run_evaluation` → `analyze`.
The method and the on-disk formats are docs/design.md; the public API is `__all__` here and in
the stage packages (`kfac_mem.collection`, `.decomposition`, `.editing`, `.evaluation`,
`.analysis`, `.baselines`, `.vision`, `.experiments`, `.audit`, `.plan`);
deeper imports are internal.
Errors a caller can fix derive from `UserError` (`kfac_mem.errors`); output directories are owned
and locked by `kfac_mem.rundir`, inputs checked by `kfac_mem.validation`.
"""

from kfac_mem.analysis import AnalyzeOptions as AnalyzeOptions
from kfac_mem.analysis import analyze as analyze
from kfac_mem.collection import CollectConfig as CollectConfig
from kfac_mem.collection import Factor as Factor
from kfac_mem.collection import FactorRun as FactorRun
from kfac_mem.collection import collect as collect
from kfac_mem.collection import load_factors as load_factors
from kfac_mem.collection import merge_factor_runs as merge_factor_runs
from kfac_mem.collection import select_sites as select_sites
from kfac_mem.data import LabelledExamples as LabelledExamples
from kfac_mem.data import Windows as Windows
from kfac_mem.data import load_windows as load_windows
from kfac_mem.decomposition import EigenRun as EigenRun
from kfac_mem.decomposition import SiteEigen as SiteEigen
from kfac_mem.decomposition import decompose_run as decompose_run
from kfac_mem.decomposition import load_eigen as load_eigen
from kfac_mem.editing import EditOptions as EditOptions
from kfac_mem.editing import EditPlan as EditPlan
from kfac_mem.editing import apply_plan as apply_plan
from kfac_mem.editing import parse_plan as parse_plan
from kfac_mem.editing import plan_from_flags as plan_from_flags
from kfac_mem.errors import NonFiniteError as NonFiniteError
from kfac_mem.errors import UserError as UserError
from kfac_mem.evaluation import MiningConfig as MiningConfig
from kfac_mem.evaluation import mine as mine
from kfac_mem.evaluation import run_evaluation as run_evaluation
from kfac_mem.protocol import CurvatureModel as CurvatureModel
from kfac_mem.sharding import MeshConfig as MeshConfig
from kfac_mem.sharding import load_mesh_config as load_mesh_config
from kfac_mem.sharding import make_mesh as make_mesh

__all__ = [
    "AnalyzeOptions",
    "CollectConfig",
    "CurvatureModel",
    "EditOptions",
    "EditPlan",
    "EigenRun",
    "Factor",
    "FactorRun",
    "LabelledExamples",
    "MeshConfig",
    "MiningConfig",
    "NonFiniteError",
    "SiteEigen",
    "UserError",
    "Windows",
    "analyze",
    "apply_plan",
    "collect",
    "decompose_run",
    "load_eigen",
    "load_factors",
    "load_mesh_config",
    "load_windows",
    "make_mesh",
    "merge_factor_runs",
    "mine",
    "parse_plan",
    "plan_from_flags",
    "run_evaluation",
    "select_sites",
]
