"""Per-chip peak numbers for the roofline estimate (public spec sheets; per chip, bf16).

Sources (Google Cloud TPU system-architecture pages, "TPU v4", "TPU v5e", "TPU v5p", "TPU v6e
(Trillium)" at cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e}): peak bf16 compute per chip, HBM capacity
and HBM bandwidth per chip, inter-chip-interconnect (ICI) bandwidth per chip.
"""

from __future__ import annotations

import dataclasses

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    bf16_flops: float  # peak FLOP/s
    hbm_bytes: int  # capacity per chip (one JAX device per chip on these generations)
    hbm_bandwidth: float  # bytes/s
    ici_bandwidth: float  # bytes/s per chip (all links together)
    source: str


CHIPS: dict[str, Chip] = {
    # v4: 275 TFLOP/s bf16, 32 GiB HBM2 at 1,200 GB/s, ICI 2,400 Gbit/s (cloud.google.com/tpu/docs/v4)
    "v4": Chip("v4", 275e12, 32 * GIB, 1200e9, 300e9, "cloud.google.com/tpu/docs/v4"),
    # v5e: 197 TFLOP/s bf16, 16 GiB HBM2 at 819 GB/s, ICI 1,600 Gbit/s (cloud.google.com/tpu/docs/v5e)
    "v5e": Chip("v5e", 197e12, 16 * GIB, 819e9, 200e9, "cloud.google.com/tpu/docs/v5e"),
    # v5p: 459 TFLOP/s bf16, 95 GiB HBM2e at 2,765 GB/s, ICI 4,800 Gbit/s (cloud.google.com/tpu/docs/v5p)
    "v5p": Chip("v5p", 459e12, 95 * GIB, 2765e9, 600e9, "cloud.google.com/tpu/docs/v5p"),
    # v6e: 918 TFLOP/s bf16, 32 GiB HBM at 1,640 GB/s, ICI 3,584 Gbit/s (cloud.google.com/tpu/docs/v6e)
    "v6e": Chip("v6e", 918e12, 32 * GIB, 1640e9, 448e9, "cloud.google.com/tpu/docs/v6e"),
}


def chip_for(topology: str) -> Chip | None:
    """The chip of a topology string (`v5e:2x4` -> v5e); None for `cpu:N` (no HBM budget)."""
    gen = topology.split(":", 1)[0].lower()
    if gen in ("v5litepod", "v5lite"):
        gen = "v5e"
    return CHIPS.get(gen)
