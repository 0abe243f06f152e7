"""Flax decoders (OLMo-2, Llama) and their checkpoint converters. Never imports `kfac_mem`."""

from models.checkpoint import save_model as save_model
from models.config import PRESETS as PRESETS
from models.config import DecoderConfig as DecoderConfig
from models.config import get_config as get_config
from models.generate import greedy_generate as greedy_generate
from models.hf import export_hf as export_hf
from models.language_model import LanguageModel as LanguageModel
from models.language_model import init_params as init_params
from models.loading import installed_file as installed_file
from models.loading import load_pretrained as load_pretrained
from models.sites import LinearSite as LinearSite

__all__ = [
    "PRESETS",
    "DecoderConfig",
    "LanguageModel",
    "LinearSite",
    "export_hf",
    "get_config",
    "greedy_generate",
    "init_params",
    "installed_file",
    "load_pretrained",
    "save_model",
]
