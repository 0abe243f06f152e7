"""K-FAC factor runs on disk: running sums, exact counts and metadata, in Orbax checkpoints.

Layout of a factor run directory:
  state/<step>/     Orbax CheckpointManager steps, each holding
                      sums:  {"A": {input group id: Σ a aᵀ [d_in, d_in]}, "G": {site id: Σ g gᵀ [d_out, d_out]}}
                      info:  JSON {"n_tokens", "windows_done", "steps", "complete"} (exact Python ints)
  metadata.json     identity of the run (model fingerprint, corpus, mode, seed, sites, …) + progress

Sums (never means) are stored so shards, hosts, resumed runs and corpora merge exactly; means are
formed only when reading: A = Σ a aᵀ / n_tokens, G = Σ g gᵀ / n_tokens.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from kfac_mem.errors import CorruptArtifactError
from kfac_mem.treekeys import flatten, nest
from models.sites import LinearSite

FORMAT = "kfac-mem-factors-v1"
METADATA = "metadata.json"


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class FactorSums:
    """Running sums: A by input group, G by site (arrays, possibly sharded jax.Arrays)."""

    A: dict[str, Any]
    G: dict[str, Any]

    def tree(self) -> dict[str, Any]:
        return {"A": nest(self.A), "G": nest(self.G)}

    @classmethod
    def from_tree(cls, tree: Mapping[str, Any]) -> FactorSums:
        return cls(flatten(tree["A"]), flatten(tree["G"]))


@dataclasses.dataclass(frozen=True)
class Factor:
    """Per-position means of one linear layer: A [d_in, d_in], G [d_out, d_out] (numpy)."""

    site: LinearSite
    A: np.ndarray
    G: np.ndarray
    n_tokens: int


def site_to_dict(site: LinearSite) -> dict[str, Any]:
    return dataclasses.asdict(site)


def site_from_dict(d: Mapping[str, Any]) -> LinearSite:
    return LinearSite(**d)


def read_metadata(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, METADATA)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{directory}: no {METADATA}; not a factor run (`kfac_mem.collection.collect` writes one)."
        )
    with open(path) as f:
        try:
            meta = json.load(f)
        except ValueError as e:
            raise CorruptArtifactError(
                f"{path}: not valid JSON ({e}); the file is corrupt."
            ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise CorruptArtifactError(f"{path}: format {fmt!r} is not {FORMAT!r}.")
    return meta


def checkpoint_manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(directory), "state"),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_handlers={
            "sums": ocp.StandardCheckpointHandler(),
            "info": ocp.JsonCheckpointHandler(),
        },
    )


def save_state(
    manager: ocp.CheckpointManager, step: int, sums: FactorSums, info: dict[str, Any]
) -> None:
    """Write one atomic checkpoint (Orbax commits a step only once it is complete)."""
    manager.save(
        step,
        args=ocp.args.Composite(
            sums=ocp.args.StandardSave(sums.tree()), info=ocp.args.JsonSave(info)
        ),
        force=True,
    )
    manager.wait_until_finished()


def restore_state(
    manager: ocp.CheckpointManager, target: FactorSums | None = None, step: int | None = None
) -> tuple[FactorSums, dict[str, Any]]:
    """Restore sums (into `target`'s shapes/shardings if given, else as host numpy) and info."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{manager.directory}: no complete checkpoint to restore.")
    if target is None:
        meta = manager.item_metadata(step)["sums"]
        abstract = jax.tree_util.tree_map(
            lambda m: np.empty(m.shape, m.dtype), meta, is_leaf=lambda x: hasattr(x, "shape")
        )
        restore = ocp.args.StandardRestore(abstract)
    else:
        restore = ocp.args.StandardRestore(
            jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target.tree())
        )
    out = manager.restore(step, args=ocp.args.Composite(sums=restore, info=ocp.args.JsonRestore()))
    sums = jax.tree_util.tree_map(np.asarray, out["sums"]) if target is None else out["sums"]
    return FactorSums.from_tree(sums), dict(out["info"])


class FactorRun(Mapping[str, Factor]):
    """`kfac_mem.load_factors(path)`: layer id -> Factor (means), plus the run's `metadata`."""

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.metadata = read_metadata(self.directory)
        self.sites = {s["id"]: site_from_dict(s) for s in self.metadata["sites"]}
        self.info = dict(self.metadata.get("progress") or {})
        if self.info.get("n_tokens") is None:  # metadata of an interrupted first save: read state
            self.info = self._restore()[1]
        self.n_tokens = int(self.info["n_tokens"])
        if self.n_tokens <= 0:
            raise ValueError(f"{self.directory}: the run has seen no tokens yet; nothing to read.")
        self._sums: FactorSums | None = None

    def _restore(self) -> tuple[FactorSums, dict[str, Any]]:
        try:
            with checkpoint_manager(self.directory) as manager:
                return restore_state(manager)
        except FileNotFoundError:
            raise
        except Exception as e:  # tensorstore / Orbax errors on truncated or missing files
            first = str(e).splitlines()[0][:200] if str(e) else ""
            raise CorruptArtifactError(
                f"{os.path.join(self.directory, 'state')}: factor checkpoint cannot be read "
                f"({type(e).__name__}: {first}); the factor run is corrupt. Collect it again "
                f"into a new directory."
            ) from None

    def read_sums(self) -> FactorSums:
        """The running sums (host numpy) from the latest checkpoint, read now and not kept
        (`sums` keeps them); refused when the checkpoint's count disagrees with metadata.json."""
        sums, info = self._restore()
        if int(info["n_tokens"]) != self.n_tokens:
            raise ValueError(
                f"{self.directory}: metadata.json ({self.n_tokens} tokens) and the "
                f"latest checkpoint ({info['n_tokens']}) disagree; rerun the collection "
                f"command to finish or repair the run."
            )
        return sums

    @property
    def sums(self) -> FactorSums:
        """The running sums (host numpy), read from the latest checkpoint on first use."""
        if self._sums is None:
            self._sums = self.read_sums()
        return self._sums

    @property
    def mode(self) -> str:
        return self.metadata["mode"]

    @property
    def complete(self) -> bool:
        return bool(self.info.get("complete"))

    def __getitem__(self, site_id: str) -> Factor:
        if site_id not in self.sites:
            raise KeyError(
                f"Layer `{site_id}` was not collected in {self.directory}; collected: {sorted(self.sites)}."
            )
        site = self.sites[site_id]
        A = np.asarray(self.sums.A[site.input_group]) / self.n_tokens
        G = np.asarray(self.sums.G[site_id]) / self.n_tokens
        return Factor(site, A, G, self.n_tokens)

    def __iter__(self) -> Iterator[str]:
        return iter(self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    def __repr__(self) -> str:
        return (
            f"FactorRun({self.directory!r}, {len(self)} layers, {self.n_tokens} tokens, "
            f"mode={self.mode}, complete={self.complete})"
        )


def load_factors(path: str) -> FactorRun:
    """Read a factor run: a mapping layer id -> Factor(A, G, n_tokens) with `.metadata`
    (mode, model fingerprint, corpus, seed, …). A and G are per-position means."""
    return FactorRun(path)
