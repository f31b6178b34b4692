"""Started by `autotune-cache record --out PATH -- CMD`, which puts this folder first on PYTHONPATH: every Python
process of the command (a server's engine, its TP workers) records its autotune lookups into AUTOTUNE_CACHE_RECORD.
Nothing is imported until Triton's autotuner is (a process that never imports Triton pays nothing); then the
sitecustomize this one shadows, if any, runs as it would have."""
import os
import sys

from autotune_cache_startup import after_import, chain  # type: ignore[import-not-found]  # this folder, on sys.path


def _start():
    try:
        from autotune_cache.record import start_from_env
        start_from_env()
    except Exception as e:  # noqa: BLE001 - the command runs on, unrecorded, and says why
        print(f"autotune-cache record: not recording in pid {os.getpid()}: {type(e).__name__}: {e}", file=sys.stderr)


after_import("triton.runtime.autotuner", _start)
chain(os.path.dirname(os.path.abspath(__file__)))
