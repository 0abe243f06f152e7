"""`Stages`: the wall-clock time of each stage of an experiment driver, logged as it goes."""

from __future__ import annotations

import time


class Stages:
    """Wall-clock time per stage (`seconds`, rounded to `digits`), printed as it goes: "== name"
    on entering, `done` (formatted with `name` and `seconds`) on leaving without an error."""

    def __init__(self, log, digits: int = 1, done: str = "   {name} done in {seconds:.1f} s"):
        self.log, self.seconds, self._t = log, {}, None
        self.digits, self.done = digits, done

    def __call__(self, name: str):
        self._name, self._t = name, time.time()
        self.log(f"== {name}")
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.seconds[self._name] = round(time.time() - self._t, self.digits)
        if exc[0] is None:
            self.log(self.done.format(name=self._name, seconds=self.seconds[self._name]))
