"""K-FAC factor collection: brute-force parity, devices, resume, engines, bad input, HLO."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfac_mem.collection.accumulate import make_step, partial_shardings, zero_sums
from kfac_mem.collection.batches import batch_shardings, global_batch
from kfac_mem.collection.config import CollectConfig
from kfac_mem.collection.head_loss import head_cotangent
from kfac_mem.collection.reduce import choose_reduce
from kfac_mem.collection.run import collect
from kfac_mem.collection.sites import input_groups, select_sites
from kfac_mem.data import Windows, array_fingerprint, load_windows
from kfac_mem.errors import NonFiniteError
from kfac_mem.sharding import logical_to_sharding, make_mesh
from models import load_pretrained

SEQ = 12


def windows(n=16, seed=0, vocab=256) -> Windows:
    toks = np.random.RandomState(seed).randint(0, vocab, (n, SEQ)).astype(np.int32)
    return Windows(toks, ("random",), array_fingerprint(toks))


@pytest.fixture(scope="module")
def olmo8(mesh8):
    return load_pretrained("tiny-olmo2", mesh=mesh8[0], rules=mesh8[1])


@pytest.fixture(scope="module")
def olmo1(mesh1):
    return load_pretrained("tiny-olmo2", mesh=mesh1[0], rules=mesh1[1])


def brute_force(model, toks, site_ids, mode, seed, batch_size, chunk):
    """Per-site Σ a aᵀ, Σ g gᵀ with g from jax.grad of the summed CE w.r.t. that site's output."""
    params = jax.device_get(model.params)
    sites = {s.id: s for s in model.linear_sites()}

    @jax.jit
    def sampled_labels(inputs, labels, weights, key):
        hidden, _ = model.hidden_states(params, inputs)
        return head_cotangent(
            hidden, model.head_kernel(params), None, labels, weights, mode, key, chunk
        )[2]

    @functools.partial(jax.jit, static_argnums=0)
    def grad_and_input(sid, inputs, labels, weights):
        def loss(pert):
            hidden, caps = model.hidden_states(params, inputs, {sid: pert}, capture=[sid])
            logp = jax.nn.log_softmax(hidden @ model.head_kernel(params))
            ce = -jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
            return jnp.sum(ce * weights), caps[sid]

        return jax.grad(loss, has_aux=True)(jnp.zeros((*inputs.shape, sites[sid].d_out)))

    A, G, n = {}, {}, 0
    for b in range(-(-len(toks) // batch_size)):  # the last batch may be partial
        x = jnp.asarray(toks[b * batch_size : (b + 1) * batch_size])
        inputs, labels, weights = model.loss_targets(x)
        if mode == "sampled":  # the same draws the collector makes (the sampler is tested below)
            labels = sampled_labels(
                inputs, labels, weights, jax.random.fold_in(jax.random.key(seed), b)
            )
        for sid in site_ids:
            g, a = grad_and_input(sid, inputs, labels, weights)
            a = np.asarray(a, np.float64)[:, :-1].reshape(-1, sites[sid].d_in)
            g = np.asarray(g, np.float64)[:, :-1].reshape(-1, sites[sid].d_out)
            A[sid] = A.get(sid, 0) + a.T @ a
            G[sid] = G.get(sid, 0) + g.T @ g
        n += x.shape[0] * (x.shape[1] - 1)
    return {s: A[s] / n for s in A}, {s: G[s] / n for s in G}, n


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("mode", ["empirical", "sampled"])
def test_factors_equal_brute_force(olmo8, tmp_path, mode):
    ids = [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.o_proj",
        "model.layers.1.mlp.gate_proj",
        "model.layers.1.mlp.down_proj",
    ]
    sites = select_sites(olmo8.linear_sites(), ids=ids)
    w = windows()
    run = collect(
        olmo8,
        w,
        sites,
        str(tmp_path),
        CollectConfig(mode=mode, batch_size=8, vocab_chunk=100),
        progress=False,
    )
    A, G, n = brute_force(olmo8, w.tokens, ids, mode, 0, 8, 100)
    assert run.n_tokens == n == 16 * (SEQ - 1)
    for sid in ids:
        assert rel(run[sid].A, A[sid]) < 1e-5, sid
        assert rel(run[sid].G, G[sid]) < 1e-5, sid
        np.testing.assert_allclose(run[sid].A, run[sid].A.T)
    assert run.metadata["mode"] == mode and run.complete


def test_head_cotangent_matches_autodiff_and_sampler_is_softmax():
    key = jax.random.key(3)
    h = jax.random.normal(key, (2, 5, 8))
    W = jax.random.normal(jax.random.fold_in(key, 1), (8, 37))
    b = jax.random.normal(jax.random.fold_in(key, 2), (37,))
    y = jax.random.randint(jax.random.fold_in(key, 3), (2, 5), 0, 37)
    w = jnp.ones((2, 5)).at[:, -1].set(0.0)

    def loss(h):
        logp = jax.nn.log_softmax(h @ W + b)
        return jnp.sum(w * -jnp.take_along_axis(logp, y[..., None], -1)[..., 0])

    ref_dh, ref_loss = jax.grad(loss)(h), loss(h)
    for chunk in (37, 16, 5):  # one chunk, uneven chunks
        dh, total, labels = head_cotangent(h, W, b, y, w, "empirical", chunk=chunk)
        np.testing.assert_allclose(dh, ref_dh, atol=1e-5)
        np.testing.assert_allclose(total, ref_loss, rtol=1e-5)
        np.testing.assert_array_equal(labels, y)
    # Sampled labels follow softmax(z): empirical frequencies over many positions.
    z = jnp.array([2.0, 0.5, 0.0, -1.0, 1.0, -3.0, 0.3])
    hz = jnp.broadcast_to(jnp.eye(7)[None], (4000, 7, 7))[:, :1]  # [4000, 1, 7] one-hot rows
    Wz = jnp.broadcast_to(z[None], (7, 7)).T * jnp.eye(7)  # h @ Wz = z for h = e_0 ... use direct:
    Wz = jnp.zeros((7, 7)).at[0].set(z)
    _, _, s = head_cotangent(
        hz,
        Wz,
        None,
        jnp.zeros((4000, 1), int),
        jnp.ones((4000, 1)),
        "sampled",
        jax.random.key(0),
        chunk=3,
    )
    freq = np.bincount(np.asarray(s).ravel(), minlength=7) / 4000
    np.testing.assert_allclose(freq, jax.nn.softmax(z), atol=0.03)


@pytest.mark.multidevice
@pytest.mark.parametrize(
    "reduce,scheme",
    [
        ("checkpoint", "auto"),
        ("step", "gather"),
        pytest.param("step", "scatter", marks=pytest.mark.slow),
    ],
)
def test_one_vs_eight_devices(olmo1, olmo8, tmp_path, reduce, scheme):
    sites = select_sites(
        olmo8.linear_sites(), layers=[0, 1], projections=["gate", "up", "down", "k"]
    )
    cfg = CollectConfig(mode="sampled", batch_size=8, vocab_chunk=64, reduce=reduce, scheme=scheme)
    r1 = collect(olmo1, windows(), sites, str(tmp_path / "one"), cfg, progress=False)
    r8 = collect(olmo8, windows(), sites, str(tmp_path / "eight"), cfg, progress=False)
    assert r1.n_tokens == r8.n_tokens
    used = r8.metadata["reduce"]
    assert used["mode"] == reduce and used["reason"] == "requested"
    assert set(used["schemes"].values()) == ({"partials"} if reduce == "checkpoint" else {scheme})
    for s in sites:
        assert rel(r8[s.id].A, r1[s.id].A) < 1e-5
        assert rel(r8[s.id].G, r1[s.id].G) < 1e-5


@pytest.mark.slow
@pytest.mark.multidevice
def test_fsdp_tp_row_blocks_equal_one_device(olmo1, tmp_path):
    """tensor = 2: rows sharded over fsdp x tensor, batch over fsdp only, MLP activations split
    over tensor; both step schemes give the one-device factors."""
    mesh, rules = make_mesh("fsdp_tp")
    tp = load_pretrained("tiny-olmo2", mesh=mesh, rules=rules)
    sites = select_sites(tp.linear_sites(), layers=[1], projections=["gate", "down", "o"])
    cfg = CollectConfig(mode="sampled", batch_size=8, vocab_chunk=64, reduce="step")
    r1 = collect(olmo1, windows(), sites, str(tmp_path / "one"), cfg, progress=False)
    for scheme in ("gather", "scatter"):
        cfg_s = dataclasses.replace(cfg, scheme=scheme)
        rt = collect(tp, windows(), sites, str(tmp_path / scheme), cfg_s, progress=False)
        assert rt.n_tokens == r1.n_tokens
        for s in sites:
            assert rel(rt[s.id].A, r1[s.id].A) < 1e-5, (scheme, s.id)
            assert rel(rt[s.id].G, r1[s.id].G) < 1e-5, (scheme, s.id)


@pytest.mark.multidevice
@pytest.mark.parametrize(
    "mode,batch_size", [("empirical", 8), pytest.param("sampled", 3, marks=pytest.mark.slow)]
)
def test_partial_batches_padded_equal_brute_force(olmo8, tmp_path, mode, batch_size):
    """5 windows on 8 devices: a batch of 8 (3 padding rows) or batches of 3 rounded up to 8
    rows each (3 + 2 real windows); every window counts."""
    ids = ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.down_proj"]
    sites = select_sites(olmo8.linear_sites(), ids=ids)
    w = windows(n=5)
    cfg = CollectConfig(mode=mode, batch_size=batch_size, vocab_chunk=100, reduce="step")
    run = collect(olmo8, w, sites, str(tmp_path), cfg, progress=False)
    A, G, n = brute_force(olmo8, w.tokens, ids, mode, 0, batch_size, 100)
    assert run.n_tokens == n == 5 * (SEQ - 1)
    assert run.complete and run.info["windows_done"] == 5
    for sid in ids:
        assert rel(run[sid].A, A[sid]) < 1e-5, sid
        assert rel(run[sid].G, G[sid]) < 1e-5, sid


def test_reduce_chosen_from_compiled_memory(olmo8):
    sites = select_sites(olmo8.linear_sites(), layers=[1], projections=["gate", "up", "down"])
    cfg = CollectConfig(mode="sampled", batch_size=8, vocab_chunk=64)
    batch = global_batch(windows(), 0, 8, batch_shardings(windows(), 8, olmo8.mesh, olmo8.rules))
    roomy = choose_reduce(olmo8, sites, cfg, batch, 8, budget_bytes=1 << 40)
    assert roomy.mode == "checkpoint" and "fastest" in roomy.reason
    # Per-shard partials hold one full copy of every factor per device; "step" does not.
    groups = input_groups(sites)
    factor_bytes = 4 * sum(s.d_in**2 for s in groups.values()) + 4 * sum(s.d_out**2 for s in sites)
    assert roomy.cost.total_bytes > factor_bytes
    tight = choose_reduce(olmo8, sites, cfg, batch, 8, budget_bytes=roomy.cost.total_bytes - 1)
    assert tight.mode == "step" and "checkpoint needs" in tight.reason
    assert tight.cost.total_bytes < roomy.cost.total_bytes
    with pytest.raises(ValueError, match=r"`batch_size` 8 does not fit.*smaller `batch_size`"):
        choose_reduce(olmo8, sites, cfg, batch, 8, budget_bytes=1024)


def test_resume_equals_uninterrupted_and_refuses_other_runs(olmo8, tmp_path):
    sites = select_sites(olmo8.linear_sites(), layers=[1], projections=["gate", "up"])
    w = windows(n=32)
    cfg = CollectConfig(mode="sampled", batch_size=8, vocab_chunk=64, save_every=1)
    full = collect(olmo8, w, sites, str(tmp_path / "full"), cfg, progress=False)
    part = collect(olmo8, w, sites, str(tmp_path / "part"), cfg, progress=False, stop_after=1)
    assert not part.complete and part.n_tokens == 8 * (SEQ - 1)
    part = collect(olmo8, w, sites, str(tmp_path / "part"), cfg, progress=False, stop_after=2)
    assert not part.complete and part.info["steps"] == 3
    done = collect(olmo8, w, sites, str(tmp_path / "part"), cfg, progress=False)
    assert done.complete and done.n_tokens == full.n_tokens
    for s in sites:
        np.testing.assert_array_equal(done[s.id].A, full[s.id].A)
        np.testing.assert_array_equal(done[s.id].G, full[s.id].G)
    with pytest.raises(ValueError, match=r"differs in.*mode"):
        collect(
            olmo8,
            w,
            sites,
            str(tmp_path / "part"),
            CollectConfig(mode="empirical", batch_size=8),
            progress=False,
        )
    with pytest.raises(ValueError, match=r"differs in.*corpus"):
        collect(olmo8, windows(n=32, seed=1), sites, str(tmp_path / "part"), cfg, progress=False)


# One mode in the default suite (the engines share every code path but the labels); both with -m slow.
@pytest.mark.parametrize("mode", [pytest.param("empirical", marks=pytest.mark.slow), "sampled"])
def test_kfac_jax_engine_equals_native(mesh8, tmp_path, mode):
    model = load_pretrained("tiny-llama", mesh=mesh8[0], rules=mesh8[1])  # tied head, GQA
    sites = select_sites(model.linear_sites(), projections=["q", "k", "o", "gate", "up", "down"])
    cfg = CollectConfig(mode=mode, batch_size=8, vocab_chunk=100)
    native = collect(model, windows(), sites, str(tmp_path / "n"), cfg, progress=False)
    ours = collect(
        model, windows(), sites, str(tmp_path / "k"), cfg, engine="kfac-jax", progress=False
    )
    for s in sites:
        assert rel(ours[s.id].A, native[s.id].A) < 1e-5, s.id
        assert rel(ours[s.id].G, native[s.id].G) < 1e-5, s.id


def test_import_kfac_jax_state(tmp_path):
    from kfac_mem.collection.kfac_jax_engine import _estimator, import_kfac_jax_state

    model = load_pretrained("tiny-olmo2")
    sites = select_sites(model.linear_sites(), layers=[0], projections=["up", "down"])
    toks = windows(n=8).tokens
    est = _estimator(model)
    args = lambda x: (model.params, (jnp.asarray(x[:, :-1]), jnp.asarray(x[:, 1:])))  # noqa: E731
    state = jax.jit(lambda a: est.init(jax.random.key(0), a, None, None))(args(toks[:4]))
    update = jax.jit(
        lambda st, a: est.update_curvature_matrix_estimate(
            st,
            ema_old=1.0,
            ema_new=1.0,
            identity_weight=0.0,
            batch_size=4,
            rng=jax.random.key(1),
            func_args=a,
        )
    )
    for half in (toks[:4], toks[4:]):
        state = update(state, args(half))
    run = import_kfac_jax_state(
        est,
        state,
        model,
        sites,
        str(tmp_path / "imp"),
        batch_size=4,
        positions_per_example=SEQ - 1,
        mode="empirical",
    )
    A, G, n = brute_force(model, toks, [s.id for s in sites], "empirical", 0, 4, 256)
    assert run.n_tokens == n
    for s in sites:
        assert rel(run[s.id].A, A[s.id]) < 1e-5 and rel(run[s.id].G, G[s.id]) < 1e-5


def test_bad_input(olmo8, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown layer ids.*closest"):
        select_sites(olmo8.linear_sites(), ids=["model.layers.0.mlp.gate"])
    with pytest.raises(ValueError, match="do not exist"):
        select_sites(olmo8.linear_sites(), layers=[7], projections=["gate"])
    short = tmp_path / "short.txt"
    short.write_text("hello")
    with pytest.raises(ValueError, match="shorter than one window"):
        load_windows([str(short)], seq_len=64, tokenizer=_CharTokenizer(), eos_id=None)
    with pytest.raises(ValueError, match="no windows"):
        collect(
            olmo8,
            windows(n=0),
            select_sites(olmo8.linear_sites(), layers=[0]),
            str(tmp_path / "x"),
            CollectConfig(batch_size=8),
            progress=False,
        )
    # A NaN weight in layer 1's MLP: the run names the layer and step and saves nothing of it.
    params = jax.tree_util.tree_map(lambda x: x, olmo8.params)
    k = params["model"]["layers"]["1"]["mlp"]["up_proj"]["kernel"]
    params["model"]["layers"]["1"]["mlp"]["up_proj"]["kernel"] = k.at[0, 0].set(jnp.nan)
    bad = olmo8.with_params(params)
    sites = select_sites(bad.linear_sites(), layers=[1], projections=["down"])
    with pytest.raises(NonFiniteError, match=r"step 0.*mlp\.down_proj"):
        collect(
            bad,
            windows(),
            sites,
            str(tmp_path / "nan"),
            CollectConfig(batch_size=8),
            progress=False,
        )
    assert not os.path.exists(tmp_path / "nan" / "state" / "0")
    assert json.load(open(tmp_path / "nan" / "metadata.json"))["progress"]["n_tokens"] == 0


class _CharTokenizer:
    class _Enc:
        def __init__(self, ids):
            self.ids = ids

    def encode(self, text, add_special_tokens=False):
        return self._Enc([ord(c) % 256 for c in text])


def _dots(txt):
    return len(re.findall(r"\bdot\(", txt))


def test_backward_stops_at_lowest_selected_layer_and_no_factor_collectives(olmo8, mesh8):
    mesh, rules = mesh8
    x = jax.device_put(
        jnp.zeros((8, SEQ), jnp.int32),
        logical_to_sharding(("activation_batch", None), (8, SEQ), mesh, rules),
    )

    def compiled(layer):
        sites = select_sites(olmo8.linear_sites(), layers=[layer], projections=["up"])
        sh = partial_shardings(sites, mesh, rules)
        cfg = CollectConfig(batch_size=8, vocab_chunk=64, reduce="checkpoint")
        step = make_step(olmo8, sites, cfg, sh, n_data=8)
        sums = zero_sums(sites, "float32", sh, leading=8)
        return step.lower(sums, olmo8.params, x, jax.random.key(0), 8).compile().as_text()

    top, bottom = compiled(1), compiled(0)
    # Selecting only the top layer's MLP must not differentiate through layer 0 (fewer matmuls).
    assert _dots(top) < _dots(bottom)
    # Per-shard partial sums: no factor-sized collective inside the step.
    for txt in (top, bottom):
        big = [
            ln
            for ln in txt.splitlines()
            if re.search(r"all-reduce(-start)?\(|reduce-scatter\(", ln) and "128,128" in ln
        ]
        assert not big, big
