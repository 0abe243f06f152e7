"""The documentation the code cites is inside the repository: no file cites the design brief or
reference notes that users do not have, and every `design.md §N` citation names a section of
docs/design.md that exists."""

from __future__ import annotations

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESIGN = os.path.join(ROOT, "docs", "design.md")
# Built from parts so this file does not cite them itself.
FORBIDDEN = ("DESIGN" + ".md", "shared/" + "reference", "reference/" + "kfac-jax-study")
HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
# "design.md §2.6", "docs/design.md §2.5, §7.4", "design.md §5.2 and §5.3"
CITATION = re.compile(r"design\.md\s+(§\d+(?:\.\d+)*(?:(?:,\s*|\s+and\s+|\s*/\s*)§\d+(?:\.\d+)*)*)")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")


def repo_files(exts=(".py", ".md", ".sh", ".yaml", ".toml")) -> list[str]:
    """Files that are or could be committed: in a git checkout, tracked and untracked-but-not-
    ignored files (run outputs under the ignored runs/ are not); elsewhere every file."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        paths = [os.path.join(ROOT, p) for p in listed if p]
    except (OSError, subprocess.CalledProcessError):
        paths = []
        for root, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
            paths += [os.path.join(root, f) for f in files]
    return sorted(p for p in paths if p.endswith(exts) and os.path.isfile(p))


def design_sections(text: str) -> set[str]:
    return set(HEADING.findall(text))


def cited_sections(text: str) -> list[str]:
    return [s for group in CITATION.findall(text) for s in SECTION.findall(group)]


def test_section_parsing_on_a_sample():
    doc = "# t\n## 1. One\n### 1.2 Sub\n## 2. Two\n"
    assert design_sections(doc) == {"1", "1.2", "2"}
    text = "see docs/design.md §1.2, §2 and design.md §3; paper §9 is not a citation"
    assert cited_sections(text) == ["1.2", "2", "3"]


def test_no_file_cites_documents_outside_the_repository():
    offenders = []
    for path in repo_files():
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if any(s in line for s in FORBIDDEN):
                    offenders.append(f"{os.path.relpath(path, ROOT)}:{lineno}: {line.strip()}")
    assert not offenders, "cite docs/design.md instead:\n" + "\n".join(offenders)


def test_every_design_citation_names_an_existing_section():
    with open(DESIGN, encoding="utf-8") as f:
        design = f.read()
    sections = design_sections(design)
    assert {str(n) for n in range(1, 10)} <= sections, sorted(sections)
    # Inside design.md a bare "§N" is an internal reference; check those too.
    internal = SECTION.findall(design)
    missing = [f"docs/design.md: §{s}" for s in internal if s not in sections]
    n_citations = 0
    for path in repo_files():
        if path == os.path.abspath(__file__):
            continue  # its samples are not citations
        with open(path, encoding="utf-8", errors="replace") as f:
            for s in cited_sections(f.read()):
                n_citations += 1
                if s not in sections:
                    missing.append(f"{os.path.relpath(path, ROOT)}: §{s}")
    assert n_citations >= 15  # the docstrings do cite it (catches a regex that matches nothing)
    assert not missing, f"sections that docs/design.md does not have: {missing}"


MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|tmp|root|home|Users)/[\w.+-]+")


def test_committed_results_name_no_machine_paths():
    """Reports, summaries and docs are read on other machines: paths in them are relative to the
    checkout (an absolute path of the machine that wrote a report is a leak and a dead link)."""
    leaks = []
    for path in repo_files((".md", ".json", ".jsonl", ".txt")):
        text = open(path, encoding="utf-8").read()
        leaks += [f"{os.path.relpath(path, ROOT)}: {m}" for m in MACHINE_PATH.findall(text)]
    assert not leaks, leaks
