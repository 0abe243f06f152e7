"""Flat HF-id dicts <-> nested Orbax trees: round trips, collisions."""

import numpy as np
import pytest

from kfac_mem.treekeys import flatten, nest


def test_round_trip_of_layer_ids():
    flat = {
        "model.layers.0.mlp.gate_proj+up_proj.input": np.ones((2, 2)),
        "model.layers.0.mlp.down_proj": np.zeros(3),
        "model.layers.10.self_attn.q_proj": 1.5,
    }
    tree = nest(flat)
    assert tree["model"]["layers"]["10"]["self_attn"]["q_proj"] == 1.5
    back = flatten(tree)
    assert set(back) == set(flat)
    for k in flat:
        np.testing.assert_array_equal(back[k], flat[k])


def test_prefix_collision_is_refused():
    with pytest.raises(ValueError, match="collides"):
        nest({"a.b": 1, "a.b.c": 2})
    with pytest.raises(ValueError, match="collides"):
        nest({"a.b.c": 2, "a": 1})
