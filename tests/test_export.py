"""`kfac-mem export`: any loadable model (preset, Orbax, HF directory) -> an HF checkpoint that
transformers loads with the same logits, with tokenizer.json exactly when the model has one."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from kfac_mem.cli import main as cli_main
from kfac_mem.rundir import kind_of
from models import load_pretrained, save_model

DEMO_ASSET = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "kfac_mem",
    "demo",
    "assets",
    "demo-olmo2",
)


def _hf_logits(directory: str, tokens: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory)
    with torch.no_grad():
        return hf(torch.as_tensor(tokens)).logits.numpy()


def test_export_preset_and_orbax_reload_in_transformers(tmp_path, capsys):
    """A preset and an Orbax copy of it export to HF directories whose transformers logits equal
    ours; without a tokenizer no tokenizer.json is written; the output is claimed as an HF export
    (refused without --overwrite the second time, never written into an input)."""
    model = load_pretrained("tiny-olmo2")
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 12))
    ours = np.asarray(model.logits(tokens))
    out = str(tmp_path / "hf")
    mesh = ["--mesh", "data"]  # one placement for every call: compiled once
    assert cli_main(["export", "--model", "tiny-olmo2", "--out", out, *mesh]) == 0
    assert "no tokenizer" in capsys.readouterr().out
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "provenance.json", "config.yaml"} <= names
    assert "tokenizer.json" not in names and kind_of(out) == "hf-export"
    np.testing.assert_allclose(_hf_logits(out, tokens), ours, atol=2e-4, rtol=1e-4)
    with open(os.path.join(out, "provenance.json")) as f:
        prov = json.load(f)
    assert prov["fingerprint"] == model.fingerprint() and prov["source"].startswith("preset:")

    # An Orbax checkpoint (with metadata) exports the same weights and keeps the metadata.
    orbax = save_model(model, str(tmp_path / "orbax"), metadata={"note": "x"})
    out2 = str(tmp_path / "hf2")
    rc = cli_main(["export", "--model", orbax, "--out", out2, "--export-dtype", "float32", *mesh])
    assert rc == 0
    np.testing.assert_allclose(_hf_logits(out2, tokens), ours, atol=2e-4, rtol=1e-4)
    with open(os.path.join(out2, "provenance.json")) as f:
        assert json.load(f)["metadata"] == {"note": "x"}

    # Existing export: refused without --overwrite; an input as output: refused.
    capsys.readouterr()
    assert cli_main(["export", "--model", "tiny-olmo2", "--out", out]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(["export", "--model", "tiny-olmo2", "--out", out, "--overwrite", *mesh]) == 0
    assert cli_main(["export", "--model", orbax, "--out", orbax]) == 2
    assert "--out" in capsys.readouterr().err


def test_export_hf_dir_with_tokenizer(tmp_path):
    """The committed demo model (an HF directory with a tokenizer, stored in bfloat16) exports
    with its tokenizer.json; transformers' logits on the exported float32 copy equal ours and the
    tokenizer encodes text to the same ids."""
    if not os.path.isfile(os.path.join(DEMO_ASSET, "config.json")):
        pytest.skip("the committed demo model is not in this checkout")
    model = load_pretrained(DEMO_ASSET)
    out = str(tmp_path / "hf")
    assert cli_main(["export", "--model", DEMO_ASSET, "--out", out, "--mesh", "data"]) == 0
    assert os.path.isfile(os.path.join(out, "tokenizer.json"))
    from tokenizers import Tokenizer

    text = "The capital of France is Paris."
    ids = Tokenizer.from_file(os.path.join(out, "tokenizer.json")).encode(text).ids
    assert ids == model.tokenizer.encode(text).ids
    tokens = np.asarray([ids[:8], ids[-8:]])
    np.testing.assert_allclose(
        _hf_logits(out, tokens), np.asarray(model.logits(tokens)), atol=5e-4, rtol=1e-4
    )
