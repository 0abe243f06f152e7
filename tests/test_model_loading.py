"""Checkpoint round trips (HF export, Orbax) and refusal of bad checkpoints with actionable errors.

Every bad input is made by editing a real tiny HF checkpoint directory written by `models.export_hf`
(and, where said, loaded by transformers): the error must name the file (and tensor) at fault and
say what to do about it.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest

import models
from models.language_model import abstract_params
from models.placement import hf_name
from models.safetensors_io import SafetensorsFile, write_safetensors

TOL = 1e-4
CONFIGS = {
    "olmo2": models.get_config("tiny-olmo2").replace(
        intermediate_size=96, bos_token_id=1, eos_token_id=2, pad_token_id=0
    ),
    "llama_tied": models.get_config("tiny-llama").replace(
        intermediate_size=96, bos_token_id=1, eos_token_id=2, pad_token_id=0
    ),
}


def random_model(config: models.DecoderConfig, seed: int) -> models.LanguageModel:
    """A model whose every parameter is re-drawn at O(1) scale (norm scales far from 1)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return 1.0 + 0.3 * rng.standard_normal(leaf.shape, np.float32)
        if "embedding" in name or "lm_head" in name:
            return rng.standard_normal(leaf.shape, np.float32)
        return rng.standard_normal(leaf.shape, np.float32) / np.sqrt(leaf.shape[0])

    shapes = abstract_params(config)[0]
    params = jax.tree_util.tree_map_with_path(lambda p, x: jax.numpy.asarray(draw(p, x)), shapes)
    return models.LanguageModel(config, params, source=f"test:{seed}")


def assert_params_equal(a, b) -> None:
    """Same tree, dtypes and bit-identical values."""
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(
            np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path)
        )


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(1).integers(3, 256, size=(2, 12), dtype=np.int32)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def exported(request, tmp_path_factory):
    """(model, HF directory written by export_hf)."""
    model = random_model(CONFIGS[request.param], seed=len(request.param))
    path = str(tmp_path_factory.mktemp(f"export_{request.param}"))
    assert models.export_hf(model.config, model.params, path) == path
    return model, path


# --- HF export round trip -----------------------------------------------------------------------


@pytest.mark.hf
def test_export_loads_in_transformers_with_same_logits(exported, tokens):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model, path = exported
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    expected_arch = {"olmo2": "Olmo2ForCausalLM", "llama": "LlamaForCausalLM"}[model.config.family]
    assert type(hf).__name__ == expected_arch
    assert hf.config.tie_word_embeddings == model.config.tie_word_embeddings
    with torch.no_grad():
        want = hf.eval()(input_ids=torch.from_numpy(tokens).long()).logits.numpy()
    got = np.asarray(model.logits(tokens))
    assert want.std() > 2.0
    err = float(np.abs(got - want).max())
    print(
        f"\nexport {model.config.family} tied={model.config.tie_word_embeddings}: "
        f"max|Δlogit| vs transformers {err:.2e}"
    )
    assert err <= TOL


def test_export_reloads_bit_exactly(exported):
    model, path = exported
    names = set(SafetensorsFile(os.path.join(path, "model.safetensors")).names)
    assert ("lm_head.weight" in names) != model.config.tie_word_embeddings
    assert "model.layers.1.mlp.gate_proj.weight" in names
    reloaded = models.load_pretrained(path)
    assert reloaded.config == model.config
    assert_params_equal(reloaded.params, model.params)


def test_export_bfloat16(exported, tmp_path):
    model, _ = exported
    models.export_hf(model.config, model.params, str(tmp_path), dtype="bfloat16")
    st = SafetensorsFile(str(tmp_path / "model.safetensors"))
    assert st.array("model.norm.weight").dtype == jax.numpy.bfloat16
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    reloaded = models.load_pretrained(str(tmp_path))
    rounded = jax.tree_util.tree_map(
        lambda x: x.astype(jax.numpy.bfloat16).astype(np.float32), model.params
    )
    assert_params_equal(reloaded.params, rounded)


def test_tokenizer_travels_with_checkpoints(exported, tmp_path):
    """tokenizer.json is written by export_hf and save_model and read back by load_pretrained."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models

    model, _ = exported
    vocab = {w: i for i, w in enumerate(["<unk>", "the", "cat", "sat", "on", "mat"])}
    tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    model = model.with_params(model.params)
    model.tokenizer = tok
    hf_dir = models.export_hf(model.config, model.params, str(tmp_path / "hf"), tokenizer=tok)
    orbax_dir = models.save_model(model, str(tmp_path / "orbax"))
    for directory in (hf_dir, orbax_dir):
        loaded = models.load_pretrained(directory)
        assert loaded.tokenizer is not None, directory
        assert loaded.tokenizer.encode("the cat sat on the dog").ids == [1, 2, 3, 4, 1, 0]


# --- Orbax --------------------------------------------------------------------------------------


@pytest.mark.multidevice
def test_orbax_round_trip_any_placement(exported, tmp_path, mesh8):
    model, _ = exported
    mesh, rules = mesh8
    directory = models.save_model(model, str(tmp_path / "ckpt"), metadata={"note": "test"})
    for placement in ({}, {"mesh": mesh, "rules": rules}):
        restored = models.load_pretrained(directory, **placement)
        assert restored.config == model.config
        assert_params_equal(restored.params, model.params)
        assert restored.fingerprint() == model.fingerprint()
    sharded = [
        x
        for x in jax.tree_util.tree_leaves(restored.params)
        if x.sharding.shard_shape(x.shape) != x.shape
    ]
    assert sharded, "restoring on the 8-device mesh left every parameter replicated"

    # A model living on the mesh saves and restores onto one device just as exactly.
    on_mesh = models.load_pretrained(directory, mesh=mesh, rules=rules)
    directory2 = models.save_model(on_mesh, str(tmp_path / "from_mesh"))
    assert_params_equal(models.load_pretrained(directory2).params, model.params)


def test_orbax_refuses_to_overwrite(exported, tmp_path):
    model, _ = exported
    directory = models.save_model(model, str(tmp_path / "ckpt"))
    other = model.with_params(jax.tree_util.tree_map(lambda x: x * 2, model.params))
    with pytest.raises(FileExistsError, match=r"ckpt.*overwrite=True"):
        models.save_model(other, directory)
    assert_params_equal(models.load_pretrained(directory).params, model.params)  # untouched
    models.save_model(other, directory, overwrite=True)
    assert_params_equal(models.load_pretrained(directory).params, other.params)


# --- bad input ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory) -> str:
    """A tiny untied Llama HF checkpoint (config.json + model.safetensors)."""
    config = CONFIGS["llama_tied"].replace(tie_word_embeddings=False)
    path = str(tmp_path_factory.mktemp("good"))
    models.export_hf(config, random_model(config, 7).params, path)
    models.load_pretrained(path)  # the unedited copy loads
    return path


@pytest.fixture
def ckpt(good_dir, tmp_path) -> str:
    """A private copy of the good checkpoint to break."""
    path = str(tmp_path / "ckpt")
    shutil.copytree(good_dir, path)
    return path


def edit_config(path: str, **changes) -> None:
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)


def read_tensors(path: str) -> dict[str, np.ndarray]:
    st = SafetensorsFile(os.path.join(path, "model.safetensors"))
    return {name: np.array(st.array(name)) for name in st.names}


def test_missing_config(ckpt):
    os.remove(os.path.join(ckpt, "config.json"))
    with pytest.raises(FileNotFoundError, match=r"ckpt: no config\.json.*needs config\.json"):
        models.load_pretrained(ckpt)


def test_missing_safetensors(ckpt):
    os.remove(os.path.join(ckpt, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"ckpt: no \*\.safetensors.*save_pretrained"):
        models.load_pretrained(ckpt)


def test_sharded_checkpoint_and_missing_shard(ckpt):
    tensors = read_tensors(ckpt)
    os.remove(os.path.join(ckpt, "model.safetensors"))
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for fname, part in shards.items():
        write_safetensors(os.path.join(ckpt, fname), {n: tensors[n] for n in part})
    weight_map = {n: f for f, part in shards.items() for n in part}
    with open(os.path.join(ckpt, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    loaded = models.load_pretrained(ckpt)  # the sharded layout loads, tensor for tensor
    for path, leaf in jax.tree_util.tree_leaves_with_path(loaded.params):
        name, transposed = hf_name(tuple(k.key for k in path))
        want = tensors.pop(name)
        np.testing.assert_array_equal(
            np.asarray(leaf), want.T if transposed else want, err_msg=name
        )
    assert not tensors

    os.remove(os.path.join(ckpt, "model-00002-of-00002.safetensors"))
    with pytest.raises(
        FileNotFoundError,
        match=r"model\.safetensors\.index\.json: lists shard "
        r"model-00002-of-00002\.safetensors.*re-download",
    ):
        models.load_pretrained(ckpt)


def test_unreadable_safetensors(ckpt):
    with open(os.path.join(ckpt, "model.safetensors"), "wb") as f:
        f.write(b"\xff" * 64)
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        models.load_pretrained(ckpt)


def test_unknown_model_type(ckpt):
    edit_config(ckpt, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    with pytest.raises(
        ValueError, match=r"config\.json: model_type 'gpt2' is not supported.*'olmo2'"
    ):
        models.load_pretrained(ckpt)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"attention_bias": True}, r"attention_bias=True"),
        ({"mlp_bias": True}, r"mlp_bias=True"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, r"rope_scaling="),
        (
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
            r"rope_parameters\.rope_type='yarn'",
        ),
        ({"hidden_act": "gelu"}, r"hidden_act='gelu'"),
        ({"sliding_window": 128}, r"sliding_window=128"),
        ({"some_new_knob": 3}, r"some_new_knob=3 \(unknown attribute\)"),
    ],
)
def test_unsupported_config_attribute_refused_by_name(ckpt, changes, named):
    edit_config(ckpt, **changes)
    with pytest.raises(ValueError, match=r"config\.json: unsupported config attributes.*" + named):
        models.load_pretrained(ckpt)


def test_tensor_with_wrong_shape(ckpt):
    tensors = read_tensors(ckpt)
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name] = tensors[name][:-1]
    write_safetensors(os.path.join(ckpt, "model.safetensors"), tensors)
    with pytest.raises(
        ValueError,
        match=(
            r"ckpt/model\.safetensors: tensor `model\.layers\.1\.mlp\.up_proj\.weight` has shape "
            r"\(95, 64\) but the config implies \(96, 64\)\. Fix config\.json"
        ),
    ):
        models.load_pretrained(ckpt)


def test_missing_tensor(ckpt):
    tensors = read_tensors(ckpt)
    del tensors["model.layers.0.self_attn.k_proj.weight"]
    write_safetensors(os.path.join(ckpt, "model.safetensors"), tensors)
    with pytest.raises(
        ValueError,
        match=r"tensor `model\.layers\.0\.self_attn\.k_proj\.weight` is "
        r"missing.*check that config\.json belongs",
    ):
        models.load_pretrained(ckpt)


def test_extra_tensor_refused(ckpt):
    tensors = read_tensors(ckpt)
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
    write_safetensors(os.path.join(ckpt, "model.safetensors"), tensors)
    with pytest.raises(ValueError, match=r"not used by the llama model.*q_proj\.bias.*refusing"):
        models.load_pretrained(ckpt)


def test_rotary_buffer_is_ignored(ckpt):
    """Old checkpoints carry `rotary_emb.inv_freq` buffers; they are recomputed, not refused."""
    tensors = read_tensors(ckpt)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
    write_safetensors(os.path.join(ckpt, "model.safetensors"), tensors)
    models.load_pretrained(ckpt)


@pytest.mark.parametrize("name", ["/nonexistent/kfac_mem_ckpt", "olmo3-1b", "tiny_llama"])
def test_nonexistent_path_or_unknown_preset(name):
    with pytest.raises(
        FileNotFoundError, match=r"neither an existing path nor a preset.*tiny-llama"
    ):
        models.load_pretrained(name)


def test_bad_gguf(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"GGUF file not found: .*missing\.gguf"):
        models.load_pretrained(str(tmp_path / "missing.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file" * 10)
    with pytest.raises(ValueError, match=r"bad\.gguf: not a readable GGUF file"):
        models.load_pretrained(str(bad))


def test_incomplete_orbax_checkpoint_refused(exported, tmp_path):
    model, _ = exported
    directory = models.save_model(model, str(tmp_path / "ckpt"))
    os.remove(os.path.join(directory, "model_config.json"))  # as after an interrupted save
    with pytest.raises(
        FileNotFoundError,
        match=r"ckpt: has an Orbax `params/` folder but no "
        r"model_config\.json.*Save the model again",
    ):
        models.load_pretrained(directory)


def test_one_registry_of_keyword_preset_constructors():
    """Every model preset is a classmethod of its config that spells its values by keyword; the one
    registry gives decoders and ViTs to `load_pretrained`; configs refuse bad fields by name."""
    kinds = {models.DecoderConfig: 0, models.ViTConfig: 0}
    for name, make in models.PRESETS.items():
        config = make()
        assert type(config) is make.__self__, name  # a classmethod of that config
        kinds[type(config)] += 1
        assert config == make() and config is not make()
        assert type(config).from_dict(config.to_dict()) == config, name
        assert models.preset_config(name) == config
    assert kinds[models.DecoderConfig] >= 9 and kinds[models.ViTConfig] >= 4
    assert set(models.PRESET_DESCRIPTIONS) == set(models.PRESETS)  # one line on what each loads
    assert all("\n" not in d and d for d in models.PRESET_DESCRIPTIONS.values())
    with pytest.raises(TypeError):  # keyword-only: no positional dimensions
        models.DecoderConfig("olmo2", 256, 64, 128, 2, 4, 2, 16)
    with pytest.raises(ValueError, match=r"`num_layers` must be >= 1, got 0"):
        models.DecoderConfig.tiny_olmo2().replace(num_layers=0)
    with pytest.raises(ValueError, match=r"`patch_size` must be >= 1, got 0"):
        models.ViTConfig.vit_tiny_test().replace(patch_size=0)
    with pytest.raises(ValueError, match=r"Unknown DecoderConfig preset 'vit-digits'.*tiny-olmo2"):
        models.get_config("vit-digits")
    vit = models.load_pretrained("vit-tiny-test", seed=3)
    assert isinstance(vit, models.VisionModel) and vit.source == "preset:vit-tiny-test:seed3"
    same = models.init_vision_model("vit-tiny-test", seed=3)
    for a, b in zip(jax.tree_util.tree_leaves(vit.params), jax.tree_util.tree_leaves(same.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
