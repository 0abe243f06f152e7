"""kfac_mem: K-FAC curvature analysis and removal of memorization, in JAX."""

from kfac_mem.factors import Factor as Factor
from kfac_mem.factors import FactorRun as FactorRun
from kfac_mem.factors import load_factors as load_factors
from kfac_mem.protocol import CurvatureModel as CurvatureModel
from kfac_mem.sharding import make_mesh as make_mesh

__all__ = ["CurvatureModel", "Factor", "FactorRun", "load_factors", "make_mesh"]
