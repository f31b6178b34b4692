"""A stand-in server process for loader tests: fake sm_90 GPU, the toy kernel, autotune_cache.install().

    python serve_with_loader.py CACHE_DIR {before,after,none} TOKENS [--strict] [--kernels MODULE] [--misses FILE]
before/after: install() before or after the kernel module is imported; none: no install (control);
plain: no install, Triton's own env vars pointing at the cache. --kernels: toy_kernels (default) or
toy_prune_kernels; --misses: install(misses=FILE), the record of what the server did not find.
Prints one JSON line: the loader report, configs benchmarked, the autotuner's cache_results, and what install() had
found right after it returned (at_install) beside how often triton_key() and ptxas ran by then and by the end."""
import importlib
import json
import os
import sys

cache_dir, mode, tokens = sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3].split(",")]
strict = True if "--strict" in sys.argv else None   # None: AUTOTUNE_CACHE_STRICT decides
kernels = sys.argv[sys.argv.index("--kernels") + 1] if "--kernels" in sys.argv else "toy_kernels"
misses = sys.argv[sys.argv.index("--misses") + 1] if "--misses" in sys.argv else None
KERNEL = {"toy_kernels": "toy_scale_kernel", "toy_prune_kernels": "toy_prune_kernel"}[kernels]
if mode == "plain":   # Triton alone: TRITON_CACHE_DIR + TRITON_CACHE_AUTOTUNING, no loader
    os.environ.update(TRITON_CACHE_DIR=cache_dir, TRITON_CACHE_AUTOTUNING="1")
else:
    os.environ.pop("TRITON_CACHE_AUTOTUNING", None)   # a server that never asked for the disk cache

from autotune_cache.builder import emulation  # noqa: E402

emulation.fake_gpu()
import autotune_cache  # noqa: E402
from autotune_cache.shapes import preset  # noqa: E402


def costly():
    """How often this process ran triton_key() and ptxas so far (both are cached per process by Triton)."""
    from triton.backends.nvidia.compiler import get_ptxas_version
    from triton.runtime.cache import triton_key
    return {"triton_key": triton_key.cache_info().misses, "ptxas": get_ptxas_version.cache_info().misses}


def snapshot(report):
    return {"mismatches": list(report.mismatches), "keys_deferred": report.keys_deferred, **costly()}


report = at_install = None
if mode == "before":
    report = autotune_cache.install(cache_dir, targets=(), modules=(kernels,), strict=strict, misses=misses)
    at_install = snapshot(report)
toy_kernels = importlib.import_module(kernels)

if mode == "after":
    report = autotune_cache.install(cache_dir, targets=(), modules=(kernels,), strict=strict, misses=misses)
    at_install = snapshot(report)
if mode == "none":
    os.environ["TRITON_CACHE_DIR"] = cache_dir
error = None
try:
    for t in tokens:
        toy_kernels.run(preset("qwen3.5-9b").per_rank(1), {"act": "bfloat16"}, t, "cpu")
except Exception as e:  # noqa: BLE001
    error = f"{type(e).__name__}: {e}"
print(json.dumps({"report": report.as_dict() if report else None, "configs_benchmarked": emulation.bench_calls,
                  "cache_results": getattr(toy_kernels, KERNEL).cache_results, "error": error,
                  "at_install": at_install, "after": costly()}))
