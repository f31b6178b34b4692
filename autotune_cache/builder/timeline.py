"""When each build child started, said hello, began and ended each part, and what it waited for: the numbers a
build benchmark splits a build's wall time into (fixed cost, per-GPU busy time). Written as JSON to the file that
AUTOTUNE_CACHE_TIMELINE names, at the end of a build (scripts/bench_build.py sets it); nothing otherwise.
Times are seconds since the build parent began the build (Build.run)."""
from __future__ import annotations

import json
import time

from .. import settings


class Timeline:
    def __init__(self):
        self.t0 = time.monotonic()
        self.children: list[dict] = []
        self._spawned: dict[int, float] = {}   # shard -> when its latest child was started
        self._of: dict[int, dict] = {}         # id(child) -> its record

    def _now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def spawning(self, shard: int) -> None:
        self._spawned[shard] = self._now()

    def _child(self, c) -> dict:
        rec = self._of.get(id(c))
        if rec is None:
            rec = self._of[id(c)] = {"shard": c.shard, "gpu": c.gpu, "spawned_s": self._spawned.get(c.shard),
                                     "hello_s": None, "ended_s": None, "parts": []}
            self.children.append(rec)
        return rec

    def hello(self, c) -> None:
        self._child(c)["hello_s"] = self._now()

    def part_started(self, c, part) -> None:
        self._child(c)["parts"].append({"unit": part.id, "tokens": list(part.tokens), "owns": len(part.owns),
                                        "tunes": len(part.tunes), "configs": part.configs,
                                        "start_s": self._now(), "done_s": None})

    def part_done(self, c, msg) -> None:
        parts = self._child(c)["parts"]
        if parts:
            parts[-1].update(done_s=self._now(), seconds=round(msg.seconds, 3),
                             bench_seconds=round(msg.bench_seconds, 3), precompile=msg.precompile,
                             compiles=msg.compiles)

    def ended(self, c) -> None:
        self._child(c)["ended_s"] = self._now()

    def write(self, tuned: dict) -> None:
        path = settings.current().timeline
        if path is None:
            return
        data = {"wall_s": self._now(), "children": self.children,
                "keys_tuned": len(tuned), "most_tunings_of_a_key": max(tuned.values(), default=0)}
        with open(path, "w") as f:
            json.dump(data, f, indent=1)
