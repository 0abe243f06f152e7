"""Which bundled texts a model was trained or fine-tuned on, read from its provenance.

Perplexity on text a model was tuned on is not held-out perplexity. `tuned_texts` follows a
model's provenance chain (an edited model -> the model it was edited from -> ...) through the
files this package writes beside weights and collects the bundled text names
(`text.BUILTIN_TEXTS`) each step declares or implies:

  model_config.json   (Orbax checkpoint)  `metadata.training_texts`, or the SmolLM2 demo's
                      `metadata.finetune` (fine-tuned on LAMBADA), or a demo model's
                      `metadata.data.sources`; then `source`
  provenance.json     (HF directory: `kfac-mem export`, `--export-hf`, the committed demo model)
                      the same fields, at the top level or under `metadata`; then `source`
  report.json         (an edit written without an Orbax copy) `model.source`

Presets, GGUF files and HF directories without these files declare nothing (docs/design.md §3).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from kfac_mem.evaluation.text import BUILTIN_DESCRIPTIONS, BUILTIN_TEXTS, builtin_path

__all__ = ["tuned_text_warnings", "tuned_texts"]

_MAX_DEPTH = 16


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _declared(meta: Mapping[str, Any]) -> dict[str, str]:
    """Bundled text name -> what in `meta` says the model was tuned on it."""
    found: dict[str, str] = {}
    texts = meta.get("training_texts")
    if isinstance(texts, list):
        for name in texts:
            if name in BUILTIN_TEXTS:
                found[name] = "training_texts"
    finetune = meta.get("finetune")
    if isinstance(finetune, Mapping) and "finetune_steps" in finetune:
        found.setdefault("lambada", "the SmolLM2 demo's fine-tuning (LAMBADA passages)")
    data = meta.get("data")
    sources = data.get("sources") if isinstance(data, Mapping) else None
    if isinstance(sources, str):
        for name in BUILTIN_TEXTS:
            if re.search(rf"\b{re.escape(name)}\b", sources, re.IGNORECASE):
                found.setdefault(name, f"its training data name {name}")
    inner = meta.get("metadata")
    if isinstance(inner, Mapping):
        for name, why in _declared(inner).items():
            found.setdefault(name, why)
    return found


def tuned_texts(source: str | None) -> dict[str, str]:
    """{bundled text name: evidence} for the model loaded from `source` (a path or preset name).

    Evidence names the file that says so and what it says; an empty dict means nothing in the
    provenance chain declares a bundled text (not that the model never saw one).
    """
    found: dict[str, str] = {}
    seen: set[str] = set()
    path = source
    for _ in range(_MAX_DEPTH):
        if not path or not os.path.isdir(path) or os.path.realpath(path) in seen:
            break
        seen.add(os.path.realpath(path))
        following = None
        for name in ("model_config.json", "provenance.json"):
            doc = _read(os.path.join(path, name))
            if doc is None:
                continue
            for text, why in _declared(doc).items():
                found.setdefault(text, f"{os.path.join(path, name)}: {why}")
            following = following or doc.get("source")
        if following is None:
            record = _read(os.path.join(path, "report.json")) or {}
            model = record.get("model")
            following = model.get("source") if isinstance(model, Mapping) else None
        path = following if isinstance(following, str) else None
    return found


def _bundled_name(source: str) -> str | None:
    """The bundled corpus `source` names or points at (its installed file), else None."""
    if source in BUILTIN_TEXTS:
        return source
    if not os.path.isfile(source):
        return None
    real = os.path.realpath(source)
    for name in BUILTIN_TEXTS:
        try:
            if os.path.realpath(builtin_path(name)) == real:
                return name
        except FileNotFoundError:
            continue
    return None


def tuned_text_warnings(model, texts: Sequence[str], arg: str = "texts") -> list[str]:
    """One line per text source in `texts` that is a bundled set `model` was tuned on
    (`tuned_texts(model.source)`): its perplexity is then measured on training text."""
    tuned = tuned_texts(getattr(model, "source", None))
    others = [n for n in BUILTIN_TEXTS if n not in tuned]
    instead = f"e.g. {others[0]}" if others else "a file of your own"
    out = []
    for source in texts:
        name = _bundled_name(source)
        if name is not None and name in tuned:
            out.append(
                f"`{arg}` {source} is the bundled {BUILTIN_DESCRIPTIONS[name]} set, which this "
                f"model was trained or fine-tuned on ({tuned[name]}): its perplexity is not "
                f"held out. Give held-out text as `{arg}` ({instead})."
            )
    return out
