"""Compile every config of a key in parallel, before Triton benchmarks them one after another.

On a miss, Triton's Autotuner benchmarks its pruned configs in turn, and the first call of each compiles it: a
cold tune is mostly compiling, on one core. Here the build child wraps `Autotuner.prune_configs` (called once per
miss, right before the benchmarks): it warms up every pruned config through Triton's AsyncCompileMode on a thread
pool (Triton >= 3.5; private API), so the benchmark loop finds each config compiled in the JIT cache. The same
arguments give the same specialization, so the compiled variants are the ones the benchmark would have made.
Errors are left to the benchmark (a config that does not compile is timed as inf there, as before).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

ENV = "AUTOTUNE_CACHE_COMPILE_WORKERS"
stats = {"keys": 0, "configs": 0, "compiled": 0, "errors": 0}   # read by tests


def workers() -> int:
    value = os.environ.get(ENV, "")
    return int(value) if value.strip() else (os.cpu_count() or 1)


def install(n_workers: int | None = None) -> bool:
    """Enable parallel precompilation in this process; False where Triton lacks AsyncCompileMode or n <= 1."""
    n = workers() if n_workers is None else n_workers
    try:
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:
        return False
    import triton.runtime.autotuner as at

    if n <= 1 or getattr(at.Autotuner.prune_configs, "_autotune_cache_precompile", False):
        return n > 1
    executor = ThreadPoolExecutor(n, thread_name_prefix="autotune-cache-compile")
    original = at.Autotuner.prune_configs

    def prune_configs(self, kwargs):
        pruned = original(self, kwargs)
        if len(pruned) > 1 and self.nargs is not None:
            args = list(self.nargs.values())   # the positional arguments of this run(), in order
            with AsyncCompileMode(executor, ignore_errors=True):
                for config in pruned:
                    try:   # kwargs holds run()'s grid and warmup: compile without launching
                        self.fn.run(*args, **dict(kwargs, warmup=True, **config.all_kwargs()))
                        stats["compiled"] += 1
                    except Exception:  # noqa: BLE001 - the benchmark meets the same error and handles it
                        stats["errors"] += 1
            stats["keys"] += 1
            stats["configs"] += len(pruned)
        return pruned

    prune_configs._autotune_cache_precompile = True
    at.Autotuner.prune_configs = prune_configs
    return True


# -- compiling in worker processes ------------------------------------------------------------------------------
# Threads share one GIL with Triton's Python front end (AST -> TTIR, pass pipelines), so they overlap little
# (measured: BENCHMARKS.md). Worker processes make the units' serving calls themselves with Autotuner.run replaced:
# each compiles its slice of every key's pruned configs (no launch, no timing, never an autotune file) and leaves
# the binaries in the shared Triton cache, where the benchmarking child then loads them instead of compiling.
# One pool per build child, started before the child's own imports (they overlap) and walking all of its units;
# the child waits for it before its first benchmark, so no compile competes with a timing for CPU or GPU.
PROCESS_ENV = "AUTOTUNE_CACHE_COMPILE_PROCESSES"
NICE = 10   # below the benchmarking child, should they ever overlap (a worker that outlives its wait)


def processes(default: int | None = None) -> int:
    """Worker processes per build child: AUTOTUNE_CACHE_COMPILE_PROCESSES, else `default`, else every core."""
    value = os.environ.get(PROCESS_ENV, "")
    if value.strip():
        return int(value)
    return default if default is not None else (os.cpu_count() or 1)


def _worker(cache_dir: str, units: list[dict], emulate: bool, wid: int, n: int) -> None:
    import sys
    import time

    started = time.monotonic()
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    os.environ.pop("TRITON_CACHE_AUTOTUNING", None)
    try:
        os.nice(NICE)
    except OSError:
        pass
    if emulate:
        from . import emulation
        emulation.install()
    import triton.runtime.autotuner as at

    from .models import RankShape
    from .targets import get

    from .triton_cache import tuning_key
    done: set = set()      # (autotuner, key) compiled already: l2norm runs twice per call (q and k), units share keys
    dealt = [0]            # configs dealt out so far, the same count in every worker (they make the same calls)

    def run(self, *args, **kwargs):
        """Compile this worker's share of the configs the benchmark will time; launch nothing. Configs are dealt
        round-robin over the whole sequence, not per key: per key, worker 0 would get the first config of all."""
        key = (id(self), tuning_key(self, args, kwargs))
        if key in done:
            return
        done.add(key)
        self.nargs = dict(zip(self.arg_names, args))
        try:
            configs = self.prune_configs(kwargs) if len(self.configs) > 1 else self.configs
            start, dealt[0] = dealt[0], dealt[0] + len(configs)
            for i, config in enumerate(configs):
                if (start + i) % n == wid:
                    try:   # kwargs holds run()'s grid and warmup: compile without launching
                        self.fn.run(*args, **dict(kwargs, warmup=True, **config.all_kwargs()))
                    except Exception as e:  # noqa: BLE001 - the benchmarking child meets the same error
                        print(f"precompile worker {wid}: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            self.nargs = None

    at.Autotuner.run = run
    import importlib
    for name in dict.fromkeys(m for unit in units for m in get(unit["target"]).imports):
        importlib.import_module(name)   # the slow part (FLA: ~10 s), while the child imports the same
    print(f"imported {time.monotonic() - started:.2f}", flush=True)
    if sys.stdin.readline().strip() != "go":   # the parent may refuse the dir (another environment's cache)
        return
    started = time.monotonic()   # compile time counts from here
    for index, unit in enumerate(units):
        target = get(unit["target"])
        shape = RankShape(**unit["shape"])
        for tokens in unit["tokens"]:
            target.run(shape, unit["dtypes"], tokens, "cpu" if emulate else "cuda")
        print(f"done {index} {time.monotonic() - started:.2f}", flush=True)


class Pool:
    """`n` worker processes compiling every config of `units` into the cache dir, started at once. Best effort:
    a worker that fails only leaves its configs to the benchmark. Plain subprocesses (the build child is a daemon
    process, which multiprocessing forbids to have children); they stay in the child's process group, so a
    timeout kill takes them too."""

    def __init__(self, cache_dir: str, units: list[dict], emulate: bool, n: int):
        import json
        import subprocess
        import sys

        self.n = n
        self.procs = [subprocess.Popen([sys.executable, "-m", __name__, json.dumps([cache_dir, units, emulate, wid, n])],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       text=True)
                      for wid in range(n)]

    def go(self) -> None:
        """Start compiling. Until then the workers only import: nothing is written to the cache dir."""
        for p in self.procs:
            try:
                p.stdin.write("go\n")
                p.stdin.close()
            except OSError:   # died at start: its configs are left to the benchmark
                pass

    def wait(self) -> dict:
        """Block until every worker has finished (or died): {workers, failed, units_done (by the slowest),
        import_s (the slowest worker's start and imports), compile_s (the slowest worker's compiling, from "go")}."""
        done, imported, finished = [], [], []
        for p in self.procs:
            units = 0
            for line in p.stdout.read().splitlines():
                word, *rest = line.split() or [""]
                if word == "imported" and rest:
                    imported.append(float(rest[0]))
                elif word == "done" and len(rest) == 2:
                    units += 1
                    finished.append(float(rest[1]))
            done.append(units)
            p.wait()
        return {"workers": self.n, "failed": sum(p.returncode != 0 for p in self.procs),
                "units_done": min(done, default=0), "import_s": round(max(imported, default=0.0), 2),
                "compile_s": round(max(finished, default=0.0), 2)}

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None and not f.closed:
                    try:
                        f.close()
                    except OSError:
                        pass


def compile_in_processes(cache_dir: str, units: list[dict], emulate: bool, n: int | None = None) -> dict:
    """Compile every config the units will benchmark in `n` worker processes (default: every core) and wait."""
    n = processes() if n is None else n
    if n <= 1:
        return {"workers": 0, "failed": 0, "units_done": 0, "import_s": 0.0, "compile_s": 0.0}
    pool = Pool(cache_dir, units, emulate, n)
    try:
        pool.go()
        return pool.wait()
    finally:
        pool.close()


if __name__ == "__main__":
    import json
    import sys

    _worker(*json.loads(sys.argv[1]))
