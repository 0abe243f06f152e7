"""The embedded default of `kfac-mem demo`: real text, memorized passages and canaries, synthetic
skills, a small OLMo-2 trained on them, and the end-to-end pipeline on top.

    mesh, rules = kfac_mem.make_mesh("fsdp")
    run_demo(PRESETS["default"](), out_dir, mesh, rules)      the LM demo (`kfac-mem demo --preset default|tiny`)
    run_smollm2_demo(out_dir, mesh, rules, SmolDemoConfig())  SmolLM2-135M (`kfac-mem demo --preset smollm2`)
"""

from kfac_mem.demo.config import PRESETS as PRESETS
from kfac_mem.demo.config import DemoConfig as DemoConfig
from kfac_mem.demo.pipeline import run_demo as run_demo
from kfac_mem.demo.smollm2 import SmolDemoConfig as SmolDemoConfig
from kfac_mem.demo.smollm2 import run_smollm2_demo as run_smollm2_demo

__all__ = ["PRESETS", "DemoConfig", "SmolDemoConfig", "run_demo", "run_smollm2_demo"]
