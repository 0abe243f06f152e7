"""kfac_mem: K-FAC curvature analysis and removal of memorization, in JAX.

The pipeline's stages as library calls (each is what the `kfac-mem` subcommand of the same name
runs): `collect` → `load_factors` → `decompose_run` → `load_eigen` → `parse_plan` + `apply_plan`
(the edit); the analyzer is `kfac_mem.analysis.analyze`, the evaluations `kfac_mem.evaluation`,
the baselines and comparison `kfac_mem.baselines`. Errors a caller can fix derive from
`UserError` (`kfac_mem.errors`); output directories are owned and locked by `kfac_mem.rundir`,
inputs checked by `kfac_mem.validation`.
"""

from kfac_mem.collect import CollectConfig as CollectConfig
from kfac_mem.collect import collect as collect
from kfac_mem.data import LabelledExamples as LabelledExamples
from kfac_mem.data import Windows as Windows
from kfac_mem.data import load_windows as load_windows
from kfac_mem.editing import EditOptions as EditOptions
from kfac_mem.editing import apply_plan as apply_plan
from kfac_mem.editing import parse_plan as parse_plan
from kfac_mem.eigen_run import EigenRun as EigenRun
from kfac_mem.eigen_run import decompose_run as decompose_run
from kfac_mem.eigen_run import load_eigen as load_eigen
from kfac_mem.errors import NonFiniteError as NonFiniteError
from kfac_mem.errors import UserError as UserError
from kfac_mem.factors import Factor as Factor
from kfac_mem.factors import FactorRun as FactorRun
from kfac_mem.factors import load_factors as load_factors
from kfac_mem.protocol import CurvatureModel as CurvatureModel
from kfac_mem.sharding import make_mesh as make_mesh

__all__ = [
    "CollectConfig",
    "CurvatureModel",
    "EditOptions",
    "EigenRun",
    "Factor",
    "FactorRun",
    "LabelledExamples",
    "NonFiniteError",
    "UserError",
    "Windows",
    "apply_plan",
    "collect",
    "decompose_run",
    "load_eigen",
    "load_factors",
    "load_windows",
    "make_mesh",
    "parse_plan",
]
