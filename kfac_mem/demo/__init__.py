"""The embedded default of `kfac-mem demo`: real text, memorized passages and canaries, synthetic
skills, a small OLMo-2 trained on them, and the end-to-end pipeline on top.

    mesh, rules = kfac_mem.make_mesh("fsdp")
    run_demo(DemoConfig.default(), out_dir, mesh, rules)       the LM demo (`kfac-mem demo`)
    run_smollm2_demo(out_dir, mesh, rules, SmolDemoConfig())   SmolLM2-135M (`kfac-mem demo --preset smollm2`)

`DEMO_PRESETS` (`kfac_mem.demo.presets`) is the one registry of named demos, the vision presets
included; `demo_config(name)` builds one.
"""

from kfac_mem.demo.config import DemoConfig as DemoConfig
from kfac_mem.demo.pipeline import run_demo as run_demo
from kfac_mem.demo.presets import DEMO_PRESETS as DEMO_PRESETS
from kfac_mem.demo.presets import DemoPreset as DemoPreset
from kfac_mem.demo.presets import demo_config as demo_config
from kfac_mem.demo.smollm2 import SmolDemoConfig as SmolDemoConfig
from kfac_mem.demo.smollm2 import run_smollm2_demo as run_smollm2_demo

__all__ = [
    "DEMO_PRESETS",
    "DemoConfig",
    "DemoPreset",
    "SmolDemoConfig",
    "demo_config",
    "run_demo",
    "run_smollm2_demo",
]
