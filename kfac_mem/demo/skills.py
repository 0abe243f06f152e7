"""Synthetic skills of the demo mixture, one per task group of the paper's Figure 3, each with a
training generator and a held-out evaluation split.

  closed_book  real country capitals (from the `countryinfo` package) stated in text; recalled
               without context: "The capital of France is" -> " Paris"
  arithmetic   successor of a 3-digit number, trained on 70% of the numbers, tested on the rest:
               "417 plus one is" -> " 418"
  open_book    retrieve a value given earlier in the same context, tested on fresh keys:
               "Notes: vob is 3, kel is 8. Question: kel is" -> " 8"
  logic        a quantified syllogism over nonce words, tested on fresh words:
               "All daxes are wugs. Rin is a dax. Is Rin a wug?" -> " Yes" / "No daxes ..." -> " No"

Every evaluation item is (prompt, answer); scoring is exact match of the greedy continuation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random

from models import installed_file

GROUPS = ("closed_book", "arithmetic", "open_book", "logic")


@dataclasses.dataclass(frozen=True)
class Item:
    prompt: str
    answer: str  # begins with a space

    @property
    def text(self) -> str:
        return self.prompt + self.answer + "."


def capitals(limit: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """(country, capital) pairs with simple single-line names, seeded subset of size `limit`."""
    data_dir = os.path.dirname(installed_file("countryinfo", os.path.join("data", "albania.json")))
    pairs = []
    for name in sorted(os.listdir(data_dir)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(data_dir, name), encoding="utf-8") as f:
            row = json.load(f)
        country, capital = row.get("name"), row.get("capital")
        if (
            isinstance(country, str)
            and isinstance(capital, str)
            and all(c.isascii() and (c.isalpha() or c in " -") for c in country + capital)
        ):
            pairs.append((country, capital))
    random.Random(seed).shuffle(pairs)
    return pairs[:limit] if limit else pairs


def _syllables(rng: random.Random, n: int, exclude: set[str] = frozenset()) -> list[str]:
    cons, vows = "bdfgklmnprstvz", "aeiou"
    out: list[str] = []
    seen = set(exclude)
    while len(out) < n:
        w = rng.choice(cons) + rng.choice(vows) + rng.choice(cons)
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


@dataclasses.dataclass
class SkillSet:
    """Training generators and held-out evaluation items for the four skill groups."""

    seed: int = 0
    n_capitals: int = 100
    n_eval: int = 200

    def __post_init__(self):
        rng = random.Random(self.seed)
        self.capital_pairs = capitals(self.n_capitals, self.seed)
        numbers = list(range(100, 999))
        rng.shuffle(numbers)
        cut = int(0.7 * len(numbers))
        self.train_numbers, self.test_numbers = numbers[:cut], numbers[cut:]
        words = _syllables(rng, 400)
        self.train_words, self.test_words = words[:300], words[300:]

    # -- closed book -----------------------------------------------------------------------------
    def capital_fact(self, rng: random.Random) -> str:
        country, capital = rng.choice(self.capital_pairs)
        template = rng.choice(
            [
                "The capital of {c} is {k}.",
                "{k} is the capital of {c}.",
                "The capital of {c} is {k}, its largest administrative center.",
            ]
        )
        return template.format(c=country, k=capital)

    def closed_book_items(self) -> list[Item]:
        return [Item(f"The capital of {c} is", f" {k}") for c, k in self.capital_pairs]

    # -- arithmetic --------------------------------------------------------------------------------
    def arithmetic(self, rng: random.Random, numbers=None) -> Item:
        n = rng.choice(numbers or self.train_numbers)
        return Item(f"{n} plus one is", f" {n + 1}")

    def arithmetic_items(self) -> list[Item]:
        return [Item(f"{n} plus one is", f" {n + 1}") for n in self.test_numbers[: self.n_eval]]

    # -- open book ---------------------------------------------------------------------------------
    def open_book(self, rng: random.Random, words=None) -> Item:
        keys = rng.sample(words or self.train_words, 4)
        values = [str(rng.randrange(10)) for _ in keys]
        notes = ", ".join(f"{k} is {v}" for k, v in zip(keys, values))
        i = rng.randrange(len(keys))
        return Item(f"Notes: {notes}. Question: {keys[i]} is", f" {values[i]}")

    def open_book_items(self) -> list[Item]:
        rng = random.Random(self.seed + 1)
        return [self.open_book(rng, self.test_words) for _ in range(self.n_eval)]

    # -- logic -------------------------------------------------------------------------------------
    def logic(self, rng: random.Random, words=None) -> Item:
        x, y, z = rng.sample(words or self.train_words, 3)
        positive = rng.random() < 0.5
        quantifier = "All" if positive else "No"
        name = z.capitalize()
        return Item(
            f"{quantifier} {x}s are {y}s. {name} is a {x}. Is {name} a {y}?",
            " Yes" if positive else " No",
        )

    def logic_items(self) -> list[Item]:
        rng = random.Random(self.seed + 2)
        return [self.logic(rng, self.test_words) for _ in range(self.n_eval)]

    # -- all groups --------------------------------------------------------------------------------
    def training_text(self, rng: random.Random) -> str:
        """One training segment: a skill example drawn uniformly over the four groups."""
        group = rng.randrange(4)
        if group == 0:
            return self.capital_fact(rng)
        return (self.arithmetic, self.open_book, self.logic)[group - 1](rng).text

    def eval_items(self) -> dict[str, list[Item]]:
        return {
            "closed_book": self.closed_book_items(),
            "arithmetic": self.arithmetic_items(),
            "open_book": self.open_book_items(),
            "logic": self.logic_items(),
        }
