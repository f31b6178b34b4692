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
stats = {"keys": 0, "configs": 0}   # read by tests


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
            with AsyncCompileMode(executor, ignore_errors=True):
                for config in pruned:
                    try:
                        self.fn.warmup(grid=(1,), **self.nargs, **kwargs, **config.all_kwargs())
                    except Exception:  # noqa: BLE001 - the benchmark meets the same error and handles it
                        continue
            stats["keys"] += 1
            stats["configs"] += len(pruned)
        return pruned

    prune_configs._autotune_cache_precompile = True
    at.Autotuner.prune_configs = prune_configs
    return True
