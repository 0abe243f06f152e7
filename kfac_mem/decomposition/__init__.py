"""Eigendecomposition of K-FAC factors: A = U_A diag(μ) U_Aᵀ, G = U_G diag(λ) U_Gᵀ, eigenvalues
descending (docs/design.md §2.5, §5.3, §7.4).

Modules, one role each:

  eigh   the stacked, sharded `jnp.linalg.eigh` of same-size factors (no collective per matrix)
  store  eigen runs on disk: `decompose_run` (factor run -> eigen run) and `load_eigen`
"""

from kfac_mem.decomposition.store import EigenRun as EigenRun
from kfac_mem.decomposition.store import SiteEigen as SiteEigen
from kfac_mem.decomposition.store import decompose_run as decompose_run
from kfac_mem.decomposition.store import load_eigen as load_eigen

__all__ = ["EigenRun", "SiteEigen", "decompose_run", "load_eigen"]
