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
# (measured: BENCHMARKS.md). Worker processes make the unit's serving call themselves, compile only their slice of
# every key's configs (no launch, fake timings, never an autotune file), and leave the binaries in the shared
# Triton cache, where the benchmarking child then loads them instead of compiling.
PROCESS_ENV = "AUTOTUNE_CACHE_COMPILE_PROCESSES"


def processes(default: int | None = None) -> int:
    """Worker processes per unit: AUTOTUNE_CACHE_COMPILE_PROCESSES, else `default`, else every core."""
    value = os.environ.get(PROCESS_ENV, "")
    if value.strip():
        return int(value)
    return default if default is not None else (os.cpu_count() or 1)


def _worker(cache_dir: str, unit: dict, emulate: bool, wid: int, n: int) -> None:
    import sys

    os.environ["TRITON_CACHE_DIR"] = cache_dir
    os.environ.pop("TRITON_CACHE_AUTOTUNING", None)
    if emulate:
        from . import emulation
        emulation.install()
    import triton.runtime.autotuner as at

    from .models import RankShape
    from .targets import get

    def check_disk_cache(self, tuning_key, configs, bench_fn):
        bench_fn()   # fake timings must never reach the disk
        return False

    def _bench(self, *args, config, **meta):
        index = next((i for i, c in enumerate(self.configs) if c is config), None)
        if index is None:
            index = next((i for i, c in enumerate(self.configs) if str(c) == str(config)), 0)
        if index % n == wid:
            try:   # meta holds run()'s grid and warmup: compile without launching
                self.fn.run(*args, **dict(meta, warmup=True, **config.all_kwargs()))
            except Exception as e:  # noqa: BLE001 - the benchmarking child meets the same error and handles it
                print(f"precompile worker {wid}: {type(e).__name__}: {e}", file=sys.stderr)
        return [float(index)] * 3

    at.Autotuner.check_disk_cache = check_disk_cache
    at.Autotuner._bench = _bench
    target = get(unit["target"])
    shape = RankShape(**unit["shape"])
    for tokens in unit["tokens"]:
        target.run(shape, unit["dtypes"], tokens, "cpu" if emulate else "cuda")


def compile_unit_in_processes(cache_dir: str, unit: dict, emulate: bool, n: int | None = None) -> dict:
    """Compile every config the unit will benchmark in `n` worker processes (default: every core). Best effort:
    a worker that fails only leaves its configs to be compiled by the benchmark. Returns {workers, failed}.
    Plain subprocesses (the build child is a daemon process, which multiprocessing forbids to have children);
    they stay in the child's process group, so a timeout kill takes them too."""
    import json
    import subprocess
    import sys

    n = processes() if n is None else n
    if n <= 1:
        return {"workers": 0, "failed": 0}
    procs = [subprocess.Popen([sys.executable, "-m", __name__, json.dumps([cache_dir, unit, emulate, wid, n])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for wid in range(n)]
    return {"workers": n, "failed": sum(p.wait() != 0 for p in procs)}


if __name__ == "__main__":
    import json
    import sys

    _worker(*json.loads(sys.argv[1]))
