"""A stand-in server: make a target's serving call in THIS process against a cache dir and count, per
kernel, disk lookups, hits and benchmarks. Used by tests, GPU checks and benchmarks.

    python -m autotune_cache.serve.stand_in --cache-dir DIR --model qwen3.5-9b --tp 1 --tokens 16,64,4096 [--emulate]

Sets TRITON_CACHE_DIR and TRITON_CACHE_AUTOTUNING=1 before the kernels are imported, as a server would.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
import time
from collections import defaultdict
from typing import Any


def counters():
    """Start counting disk lookups in this process; returns the dict that fills up."""
    from ..autotuner import disk
    stats: defaultdict[str, dict[str, Any]] = defaultdict(
        lambda: {"lookups": 0, "hits": 0, "benchmarks": 0, "keys": []})

    def on_lookup(lookup):
        s = stats[lookup.kernel]
        s["lookups"] += 1
        s["hits" if lookup.hit else "benchmarks"] += 1
        s["keys"].append(list(lookup.key))

    disk.add_listener(on_lookup)
    return stats


class _GcLog:
    """The garbage collections inside a timed call: a full one over a big heap (0.19 s at a million objects) lands
    where the heap's growth happens to cross its threshold, so a first call's time is read with it beside."""

    def __init__(self) -> None:
        self._start: float | None = None
        self.reset()
        gc.callbacks.append(self._on_gc)

    def reset(self) -> None:
        self.full, self.seconds = 0, 0.0

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        elif self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self.full += info["generation"] == 2
            self._start = None

    def totals(self) -> dict[str, Any]:
        return {"gc_full": self.full, "gc_s": round(self.seconds, 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autotune_cache.serve.stand_in", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--config", default=None)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--target", default="fla")
    ap.add_argument("--tokens", default="16,64,512,4096,16384")
    ap.add_argument("--emulate", action="store_true")
    ap.add_argument("--loader", action="store_true",
                    help="only call autotune_cache.install(DIR) (no Triton env vars), as a server with the plugin")
    ap.add_argument("--gc-collect", action="store_true",
                    help="gc.collect() after the kernel imports, before the timed calls: as vLLM's and SGLang's model "
                         "loaders do after loading the weights, so no full collection of the start-up heap lands in "
                         "a timed call by where this process's allocations happen to cross the threshold")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    gc_log = _GcLog()
    if args.emulate:
        from ..builder import emulation
        emulation.fake_gpu()
    from ..targets import get
    start = time.perf_counter()
    import triton  # noqa: F401 - timed apart: install() would otherwise count it (a server has it imported anyway)
    import_triton_s = round(time.perf_counter() - start, 4)
    loader_report = None
    install_s = None
    if args.loader:
        os.environ.pop("TRITON_CACHE_AUTOTUNING", None)
        from .loader import install
        # a target given as a module path (tests' toy target) has its kernels in its own module tree
        extra = get(args.target).module_prefixes if args.target not in ("fla",) else ()
        start = time.perf_counter()
        loader_report = install(args.cache_dir, modules=extra)
        install_s = round(time.perf_counter() - start, 4)
    else:
        os.environ["TRITON_CACHE_DIR"] = os.path.abspath(args.cache_dir)
        os.environ["TRITON_CACHE_AUTOTUNING"] = "1"
    from .. import shapes

    target = get(args.target)
    shape = shapes.resolve(args.model, args.config).per_rank(args.tp)
    dtypes = target.default_dtypes(shape)
    stats = counters()
    device = "cpu" if args.emulate else "cuda"
    start = time.perf_counter()
    for module in target.imports:  # import time is not the autotuner's: keep it out of the first call
        importlib.import_module(module)
    import_s = round(time.perf_counter() - start, 3)
    if args.gc_collect:
        gc.collect()
    calls = []
    for tokens in [int(t) for t in args.tokens.split(",")]:
        gc_log.reset()
        start = time.perf_counter()
        target.run(shape, dtypes, tokens, device)
        if device == "cuda":
            import torch
            torch.cuda.synchronize()
        calls.append({"tokens": tokens, "seconds": round(time.perf_counter() - start, 4), **gc_log.totals()})
    report = {"kernels": dict(stats), "calls": calls, "import_s": import_s, "import_triton_s": import_triton_s,
              "install_s": install_s, "gc_collect": args.gc_collect,
              "lookups": sum(s["lookups"] for s in stats.values()),
              "hits": sum(s["hits"] for s in stats.values()),
              "benchmarks": sum(s["benchmarks"] for s in stats.values())}
    if args.emulate:
        from ..builder import emulation
        report["configs_benchmarked"] = emulation.bench_calls
    if loader_report is not None:
        report["loader"] = loader_report.as_dict()
        print(loader_report.summary(), file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    else:
        for name, s in report["kernels"].items():
            print(f"{name:50s} lookups={s['lookups']:3d} hits={s['hits']:3d} benchmarks={s['benchmarks']:3d}")
        for c in calls:
            print(f"T={c['tokens']:6d} first call {c['seconds']:.3f} s (of which garbage collection {c['gc_s']:.3f} s, "
                  f"{c['gc_full']} full)")
        if install_s is not None:
            print(f"install() {install_s:.3f} s (import triton before it: {import_triton_s:.3f} s)")
        print(f"total: {report['lookups']} lookups, {report['hits']} hits, {report['benchmarks']} benchmarks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
