"""Inputs are checked before any work or write, with one shared check per property; the CLI turns
every user error into one line naming a flag that exists (exit 2), Ctrl-C into a resume hint
(exit 130)."""

import argparse
import ast
import dataclasses
import os
import re
import signal
import threading
import time

import numpy as np
import pytest

from kfac_mem.cli import ARGUMENT_FLAGS, build_parser, flag_message
from kfac_mem.cli import main as cli_main
from kfac_mem.data import iter_documents, load_windows
from kfac_mem.errors import InputError, NonFiniteError
from kfac_mem.evaluation.io import read_memorized
from kfac_mem.validation import check_finite_arrays, check_token_ids


class _Tok:
    """Byte-level tokenizer stand-in with the `tokenizers` encode API (ids = UTF-8 bytes)."""

    class _Enc:
        def __init__(self, ids):
            self.ids = ids

    def encode(self, text, add_special_tokens=False):
        return self._Enc(list(text.encode()))


def run_cli(argv, capsys) -> tuple[int, str]:
    rc = cli_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


def _bad_id_files(tmp_path):
    neg = tmp_path / "neg.npy"
    np.save(neg, np.array([[1, 2, -3, 4]] * 8, np.int32))
    big = tmp_path / "big.npy"
    np.save(big, np.array([[1, 2, 2**31 + 5, 4]] * 8, np.int64))  # wraps to negative as int32
    over = tmp_path / "over.npy"
    np.save(over, np.array([[1, 2, 3, 256]] * 8, np.int32))
    return ((neg, -3), (big, 2**31 + 5), (over, 256))


def test_token_ids_are_range_checked_before_any_cast(tmp_path):
    for path, bad in _bad_id_files(tmp_path):
        with pytest.raises(
            InputError, match=rf"has token id {bad} outside .*\[0, 256\) \(row 0, position \d\)"
        ):
            load_windows([str(path)], vocab_size=256)
    # The same check serves evaluate's and analyze's jsonl windows.
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prefix_ids": [1, 2], "suffix_ids": [3, 300]}\n')
    with pytest.raises(ValueError, match=r"rows.jsonl:1: `suffix_ids` has token id 300 outside"):
        read_memorized(str(rows), vocab_size=256)
    check_token_ids(np.arange(256), 256, "ok")
    wide = tmp_path / "wide.npy"
    np.save(wide, np.zeros((2, 600), np.int32))
    with pytest.raises(InputError, match="600 tokens exceed the model's maximum of 512"):
        load_windows([str(wide)], max_positions=512)
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=f"{empty}: not a readable .npy array"):
        load_windows([str(empty)])
    with pytest.raises(InputError, match="`max_tokens` must be >= 1, got 0"):
        load_windows([str(wide)], max_tokens=0)


@pytest.mark.slow
def test_collect_cli_refuses_bad_inputs_and_writes_nothing(tmp_path, capsys):
    """The CLI applies the checks with the model's vocabulary and positions (tiny-olmo2: 256, 4096)."""
    wide = tmp_path / "wide.npy"
    np.save(wide, np.zeros((8, 4097), np.int32))
    ok = tmp_path / "ok.npy"
    np.save(ok, np.ones((8, 8), np.int32))
    cases = [(p, f"token id {bad}") for p, bad in _bad_id_files(tmp_path)]
    cases += [(wide, "4097 tokens exceed the model's maximum of 4096 positions")]
    for path, expected in cases:
        out = tmp_path / f"run-{path.stem}"
        argv = ["collect", "--model", "tiny-olmo2", "--data", str(path), "--out", str(out)]
        rc, msg = run_cli([*argv, "--no-progress"], capsys)
        assert rc == 2 and expected in msg, msg
        assert not out.exists()  # no 0-token run left to block the corrected rerun
    out = tmp_path / "run"
    argv = ["collect", "--model", "tiny-olmo2", "--data", str(ok), "--out", str(out)]
    rc, msg = run_cli([*argv, "--max-tokens", "0"], capsys)
    assert rc == 2 and msg.endswith("--max-tokens must be >= 1, got 0.")
    assert not out.exists()


def test_npy_lists_and_directories_are_token_windows(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (3, 8)), rng.integers(0, 256, (5, 8))
    d = tmp_path / "d"
    d.mkdir()
    np.save(d / "a.npy", a)
    np.save(d / "b.npy", b)
    both = load_windows([str(d / "a.npy"), str(d / "b.npy")], vocab_size=256)
    np.testing.assert_array_equal(both.tokens, np.concatenate([a, b]))
    from_dir = load_windows([str(d)], vocab_size=256)
    np.testing.assert_array_equal(from_dir.tokens, both.tokens)
    assert from_dir.fingerprint == both.fingerprint
    (d / "notes.txt").write_text("some text")
    with pytest.raises(InputError, match=r"mixes .npy token windows .* with text"):
        load_windows([str(d)], tokenizer=_Tok())
    np.save(d / "c.npy", rng.integers(0, 256, (2, 9)))
    os.remove(d / "notes.txt")
    with pytest.raises(InputError, match=r"c.npy: windows of length 9"):
        load_windows([str(d)])


def test_jsonl_nulls_and_bare_values_are_refused(tmp_path):
    cases = {
        '{"text": null}': r":1: `text` must be a string, got null",
        '"bare string"': r":1: expected a JSON object with a `text` field, got a str",
        "42": r":1: expected a JSON object .* got a int",
        '{"body": "x"}': r":1: no `text` field",
    }
    for line, pattern in cases.items():
        path = tmp_path / "c.jsonl"
        path.write_text(line + "\n")
        with pytest.raises(InputError, match=pattern):
            list(iter_documents([str(path)]))
    path.write_text('{"text": "hello world"}\n')
    assert list(iter_documents([str(path)])) == ["hello world"]


def test_non_finite_arrays_name_the_layer_and_artifact():
    with pytest.raises(NonFiniteError, match=r"in eigen run E: layers.1.up.*Nothing was written"):
        check_finite_arrays(
            {"layers.0.up": np.ones(3), "layers.1.up": [1.0, np.inf]}, "eigen run E"
        )


def test_flag_values_name_the_flag(capsys, tmp_path):
    from kfac_mem.cli.common import parse_layer_selection

    with pytest.raises(InputError, match=r"^--layers expects layer indices .* got 'abc'"):
        parse_layer_selection("abc", None, 4, ("gate",))
    with pytest.raises(ValueError, match=r"^--layers \[7\] out of range"):
        parse_layer_selection("7", None, 4, ("gate",))
    out = str(tmp_path / "x")
    with pytest.raises(SystemExit):
        cli_main(["collect", "--model", "m", "--data", "d", "--out", out, "--seq-len", "x"])
    assert "argument --seq-len: invalid int value" in capsys.readouterr().err


@pytest.mark.slow
def test_edit_cli_flag_values_name_the_flag(capsys, tmp_path):
    out = str(tmp_path / "x")
    base = ["edit", "--model", "tiny-olmo2", "--method", "svd", "--out", out]
    for extra, start in (
        (["--layers", "0", "--rho", "0.5"], "--method svd takes --drop"),  # ρ is mass kept
        (["--layers", "x", "--drop", "0.5"], "--layers expects"),
    ):
        rc, msg = run_cli([*base, *extra], capsys)
        assert rc == 2 and msg.startswith(f"kfac-mem edit: error: {start}"), msg
    assert not os.path.exists(out)


@pytest.mark.slow
def test_sigint_says_how_to_resume(tmp_path, capsys):
    """A real SIGINT during a collection: one line, exit 130, nothing but a resumable run."""
    data = tmp_path / "tok.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (65536, 16)).astype(np.int32))
    out = tmp_path / "run"
    argv = ["collect", "--model", "tiny-olmo2", "--data", str(data), "--mode", "empirical"]
    argv += ["--layers", "1", "--projections", "up", "--save-every", "1", "--out", str(out)]
    stop = threading.Event()

    def interrupt_once_running():
        # SIGINT once the run has written its first checkpoint (not after a fixed delay, which a
        # loaded machine may spend still compiling); 8192 steps leave it plenty of time.
        deadline = time.time() + 600
        while not stop.is_set() and time.time() < deadline:
            if (out / "state").is_dir() and any((out / "state").iterdir()):
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=interrupt_once_running, daemon=True)
    watcher.start()
    try:
        rc, msg = run_cli([*argv, "--no-progress"], capsys)
    finally:
        stop.set()
    assert rc == 130 and msg == "kfac-mem collect: interrupted; rerun the same command to resume"
    from kfac_mem.rundir import kind_of

    assert kind_of(str(out)) == "factors"  # a resumable run, interrupted after its first write


def _flags_in(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))


def _parsers() -> dict[str, argparse.ArgumentParser]:
    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    out = {}
    for name, p in sub.choices.items():
        out[name] = p
        for a in p._actions:  # nested subcommands (baseline bsn)
            if isinstance(a, argparse._SubParsersAction):
                out.update({f"{name} {n}": q for n, q in a.choices.items()})
    return out


def _options(p: argparse.ArgumentParser) -> set[str]:
    opts = {o for a in p._actions for o in a.option_strings}
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for q in a.choices.values():
                opts |= _options(q)
    return opts


def test_every_flag_a_message_names_exists():
    """Walk every `--flag` in the package's source strings (messages, hints, help) and in the CLI's
    argument-name table against the parsers: a hint must name a flag some command accepts, and
    `kfac-mem CMD ... --flag` must name one of CMD's flags."""
    parsers = _parsers()
    every = {"--debug", "--help"} | set().union(*(_options(p) for p in parsers.values()))
    for command, table in ARGUMENT_FLAGS.items():
        # a command's table may also name its positional arguments (by metavar, e.g. merge's RUN)
        own = parsers[command]._actions if command in parsers else []
        positional = {a.metavar for a in own if not a.option_strings and a.metavar}
        assert set(table.values()) <= every | positional, table
    root = os.path.join(os.path.dirname(__file__), "..", "kfac_mem")
    unknown, wrong_cmd = [], []
    for r, _, files in os.walk(root):
        for f in files:
            if not f.endswith((".py", ".yaml")):
                continue
            text = open(os.path.join(r, f), encoding="utf-8").read()
            text = re.sub(r"pip install [^`'\"\n]*", "", text)  # pip's flags, not ours
            # other programs' flags: git's argv, XLA_FLAGS, matplotlib line styles ("--s")
            text = re.sub(r'.*"git".*|XLA_FLAGS=[^`\'"\n ]*|"--s"', "", text)
            # Scripts with a parser of their own (python -m kfac_mem.baselines.toy) define theirs.
            own = set(re.findall(r"add_argument\(\s*\"(--[a-z0-9-]+)\"", text))
            for flag in _flags_in(text) - every - own:
                unknown.append(f"{f}: {flag}")
            for cmd, rest in re.findall(r"kfac-mem ([a-z]+(?: bsn)?)((?: [^`'\"\n]*)?)", text):
                if cmd in parsers:
                    for flag in _flags_in(rest) - _options(parsers[cmd]) - {"--debug", "--help"}:
                        wrong_cmd.append(f"{f}: kfac-mem {cmd} ... {flag}")
    assert not unknown, unknown
    assert not wrong_cmd, wrong_cmd
    # The mapping: library argument names become this command's flags.
    ns = argparse.Namespace(out="x", overwrite=False, accumulate="float32")
    msg = flag_message("`out_dir` /x: pass `overwrite`; `paths` bad; `mystery`", "collect", ns)
    assert msg == "--out /x: pass --overwrite; --data bad; `mystery`"
    assert flag_message("`paths` /r is incomplete", "merge") == "RUN /r is incomplete"


# --- the library speaks in arguments, the CLI in flags -------------------------------------------

# Other programs' flags a message may name (pip, XLA, git), removed before looking for ours.
_OTHER_PROGRAMS = re.compile(r"pip install [^`'\"\n]*|XLA_FLAGS=[^`'\"\n ]*")
_LINE_STYLE = re.compile(r"--[a-z]")  # a matplotlib format string ("--s": dashed, squares)


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string nodes that are module, class or function docstrings."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _string_literals(tree: ast.AST):
    """(node, text) of every string literal; an f-string is one literal ({} for its values), the
    argv of a `git` subprocess is skipped."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.List | ast.Tuple) and node.elts:
            first = node.elts[0]
            if isinstance(first, ast.Constant) and first.value == "git":
                skip |= {id(e) for e in node.elts}
        if isinstance(node, ast.JoinedStr):
            skip |= {id(v) for v in node.values}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node, node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            yield node, text


def test_library_messages_name_arguments_not_flags():
    """No string literal outside kfac_mem/cli/ names a `--flag`: errors, hints, skip reasons and
    report text name function arguments (in backticks), which the CLI maps to its flags
    (`ARGUMENT_FLAGS`, `flag_message`). Two kinds of literal may show a flag, because they document
    the command line rather than speak to a caller: a docstring that names the `kfac-mem` command
    the flag belongs to, and a recorded command line (a literal that starts with "kfac-mem ", such
    as the demo model's provenance)."""
    root = os.path.join(os.path.dirname(__file__), "..")
    files = [
        os.path.join(r, f)
        for top in ("kfac_mem", "models")
        for r, _, fs in os.walk(os.path.join(root, top))
        for f in fs
        if f.endswith(".py") and os.sep + "cli" + os.sep not in os.path.relpath(r, root) + os.sep
    ]
    assert len(files) > 100
    offenders = []
    for path in files:
        tree = ast.parse(open(path, encoding="utf-8").read())
        docs = _docstrings(tree)
        for node, text in _string_literals(tree):
            flags = _flags_in(_OTHER_PROGRAMS.sub("", text))
            if not flags or text.startswith("kfac-mem ") or _LINE_STYLE.fullmatch(text):
                continue
            if id(node) in docs:
                # each flag must follow a `kfac-mem CMD` on the same line
                bad = [
                    line
                    for line in text.splitlines()
                    if _flags_in(_OTHER_PROGRAMS.sub("", line)) and "kfac-mem " not in line
                ]
                if not bad:
                    continue
                flags = _flags_in(" ".join(bad))
            where = f"{os.path.relpath(path, root)}:{node.lineno}"
            offenders.append(f"{where}: {sorted(flags)}")
    assert not offenders, offenders


def test_a_library_error_names_the_argument_and_the_cli_the_flag(tmp_path, capsys):
    """The same three errors, raised from Python and through the CLI: a collection batch size, an
    edit plan, a mesh axis size."""
    from kfac_mem.collection.config import CollectConfig
    from kfac_mem.editing import plan_from_json
    from kfac_mem.sharding import make_mesh
    from models import load_pretrained

    with pytest.raises(ValueError, match=r"^`batch_size` must be >= 1, got 0\.$"):
        CollectConfig(batch_size=0)
    sites = load_pretrained("tiny-olmo2").linear_sites()
    with pytest.raises(ValueError, match=r"^`text` is not valid JSON"):
        plan_from_json("{", sites)
    with pytest.raises(ValueError, match=r"Change the axis sizes with `sizes` \(e\.g\. tensor=1\)"):
        make_mesh("fsdp_tp", tensor=3)

    data = tmp_path / "ok.npy"
    np.save(data, np.ones((8, 8), np.int32))
    collect = ["collect", "--model", "tiny-olmo2", "--data", str(data), "--no-progress"]
    cases = [  # (argv, what the message says, the library argument it must not name)
        (
            [*collect, "--out", str(tmp_path / "a"), "--batch-size", "0"],
            "kfac-mem collect: error: --batch-size must be >= 1, got 0.",
            "`batch_size`",
        ),
        (
            ["edit", "--model", "tiny-olmo2", "--method", "svd", "--layers-json", "{"],
            "kfac-mem edit: error: --layers-json is not valid JSON",
            "`text`",
        ),
        (
            [
                *collect,
                "--out",
                str(tmp_path / "b"),
                "--mesh",
                "fsdp_tp",
                "--mesh-axis",
                "tensor=3",
            ],
            "Change the axis sizes with --mesh-axis (e.g. tensor=1)",
            "`sizes`",
        ),
    ]
    for i, (argv, expected, argument) in enumerate(cases):
        if argv[0] == "edit":
            argv = [*argv, "--out", str(tmp_path / f"edit{i}")]
        rc, msg = run_cli(argv, capsys)
        assert rc == 2 and expected in msg and argument not in msg, msg


def test_the_cli_maps_destinations_and_leaves_quoted_values():
    """A library argument becomes the flag whose destination it is (`sets` -> --set, not --sets);
    a name a message gives as a value (a set, a field, a mesh axis) is left as it is."""
    msg = "`sets` entry clean=x; Set `clean` (x): bad; `clean` 'y'; mesh axis `data`; `rhos`"
    assert flag_message(msg, "analyze") == (
        "--set entry clean=x; Set `clean` (x): bad; --clean 'y'; mesh axis `data`; --rho"
    )
    assert flag_message("field `text`; `paths` `length`", "evaluate") == (
        "field `text`; --text --window"
    )


def _config_cases():
    from kfac_mem.demo.config import DemoConfig
    from kfac_mem.demo.mixture import MixtureConfig
    from kfac_mem.demo.smollm2 import SmolDemoConfig
    from kfac_mem.editing import EditOptions
    from kfac_mem.training import TrainConfig
    from kfac_mem.vision.demo import VisionDemoConfig
    from kfac_mem.vision.train import TrainConfig as VisionTrainConfig

    vision = VisionDemoConfig.vit_tiny()
    return [
        (EditOptions, {"method": "sgd"}, "method"),
        (EditOptions, {"eigenvalues": "exact"}, "eigenvalues"),
        (EditOptions, {"precision": "float16"}, "precision"),
        (EditOptions, {"seed": 0.5}, "seed"),
        (DemoConfig, {"rhos": (0.6, 1.5)}, "rhos"),
        (DemoConfig, {"svd_drops": (1.0,)}, "svd_drops"),
        (DemoConfig, {"factor_mode": "gold"}, "factor_mode"),
        (DemoConfig, {"protected_groups": ("poetry",)}, "protected_groups"),
        (DemoConfig, {"train_batch": 0}, "train_batch"),
        (DemoConfig, {"max_recitation_after": 1.5}, "max_recitation_after"),
        (MixtureConfig, {"prefix_len": 100}, "prefix_len"),
        (MixtureConfig, {"memorized_rate": -0.1}, "memorized_rate"),
        (SmolDemoConfig, {"rhos": (0.0,)}, "rhos"),
        (SmolDemoConfig, {"finetune_steps": 0}, "finetune_steps"),
        (lambda **kw: dataclasses.replace(vision, **kw), {"noise_fraction": 2.0}, "noise_fraction"),
        (lambda **kw: dataclasses.replace(vision, **kw), {"n_train": 0}, "n_train"),
        (
            lambda **kw: TrainConfig(steps=10, batch_size=2, **kw),
            {"optimizer": "adam"},
            "optimizer",
        ),
        (TrainConfig, {"steps": 0, "batch_size": 2}, "steps"),
        (VisionTrainConfig, {"learning_rate": 0.0}, "learning_rate"),
        (VisionTrainConfig, {"end_learning_rate_fraction": 2.0}, "end_learning_rate_fraction"),
    ]


def test_configs_refuse_bad_fields_on_construction_naming_them():
    """Every config dataclass checks its fields in `__post_init__`, so a bad value fails where it
    is written, with the field's name (which the CLI turns into the flag)."""
    for make, bad, field in _config_cases():
        with pytest.raises(ValueError, match=rf"^`{field}`"):
            make(**bad)
    # The two training configs name the schedule's shared fields alike (steps vs. epochs aside).
    from kfac_mem.training import TrainConfig
    from kfac_mem.vision.train import TrainConfig as VisionTrainConfig

    lm = {f.name for f in dataclasses.fields(TrainConfig)}
    vision = {f.name for f in dataclasses.fields(VisionTrainConfig)}
    assert {"learning_rate", "weight_decay", "end_learning_rate_fraction", "grad_clip"} <= (
        lm & vision
    )


def test_cli_defaults_are_the_library_defaults():
    """The CLI reads its defaults from the dataclasses it fills instead of retyping them."""
    from kfac_mem.analysis import AnalyzeOptions
    from kfac_mem.collection.config import CollectConfig
    from kfac_mem.editing import EditOptions
    from kfac_mem.evaluation.mining import MiningConfig

    p = build_parser()
    base = ["--model", "m", "--out", "o"]
    collect = p.parse_args(["collect", *base, "--data", "d"])
    c = CollectConfig()
    assert (collect.mode, collect.seed, collect.batch_size, collect.accumulate) == (
        c.mode,
        c.seed,
        c.batch_size,
        c.accumulate_dtype,
    )
    assert (collect.vocab_chunk, collect.save_every, collect.reduce, collect.step_scheme) == (
        c.vocab_chunk,
        c.save_every,
        c.reduce,
        c.scheme,
    )
    analyze = p.parse_args(["analyze", *base, "--eigen", "e", "--set", "a=b"])
    a = AnalyzeOptions()
    assert (analyze.mode, analyze.top_k, analyze.batch_size, analyze.positions) == (
        a.mode,
        a.top_k,
        a.batch_size,
        a.positions,
    )
    assert tuple(float(x) for x in analyze.rho.split(",")) == a.rhos
    assert (analyze.chunk_mb << 20, analyze.ablation, analyze.eval_batch_size) == (
        a.chunk_bytes,
        a.ablation,
        a.eval_batch_size,
    )
    edit = p.parse_args(["edit", *base, "--layers-json", "{}"])
    e = EditOptions()
    assert (edit.method, edit.eigenvalues, edit.precision, edit.seed) == (
        e.method,
        e.eigenvalues,
        e.precision,
        e.seed,
    )
    mine = p.parse_args(["mine", *base, "--corpus", "c"])
    m = MiningConfig()
    for field in dataclasses.fields(MiningConfig):
        assert getattr(mine, field.name) == getattr(m, field.name), field.name
