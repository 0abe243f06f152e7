"""Flax decoders (OLMo-2, Llama), the ViT classifier, and their checkpoint converters.

Never imports `kfac_mem`.
"""

from models.checkpoint import save_model as save_model
from models.config import DecoderConfig as DecoderConfig
from models.generate import beam_search as beam_search
from models.generate import greedy_generate as greedy_generate
from models.generate import sample_generate as sample_generate
from models.hf import export_hf as export_hf
from models.language_model import LanguageModel as LanguageModel
from models.language_model import init_params as init_params
from models.loading import installed_file as installed_file
from models.loading import load_pretrained as load_pretrained
from models.presets import PRESET_DESCRIPTIONS as PRESET_DESCRIPTIONS
from models.presets import PRESETS as PRESETS
from models.presets import get_config as get_config
from models.presets import get_vit_config as get_vit_config
from models.presets import preset_config as preset_config
from models.sites import LinearSite as LinearSite
from models.vision_model import VisionModel as VisionModel
from models.vision_model import init_vision_model as init_vision_model
from models.vit_config import ViTConfig as ViTConfig
from models.vit_hf import export_vit_hf as export_vit_hf
from models.vit_hf import load_vit_hf as load_vit_hf

__all__ = [
    "PRESETS",
    "PRESET_DESCRIPTIONS",
    "DecoderConfig",
    "LanguageModel",
    "LinearSite",
    "ViTConfig",
    "VisionModel",
    "beam_search",
    "export_hf",
    "export_vit_hf",
    "get_config",
    "get_vit_config",
    "greedy_generate",
    "init_params",
    "init_vision_model",
    "installed_file",
    "load_pretrained",
    "load_vit_hf",
    "preset_config",
    "sample_generate",
    "save_model",
]
