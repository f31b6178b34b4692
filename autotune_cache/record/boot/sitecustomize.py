"""Started by `autotune-cache record --out PATH -- CMD`, which puts this folder first on PYTHONPATH: every Python
process of the command (a server's engine, its TP workers) records its autotune lookups into AUTOTUNE_CACHE_RECORD.
Nothing is imported until Triton's autotuner is (a process that never imports Triton pays nothing); then the
sitecustomize this one shadows, if any, runs as it would have."""
import importlib.abc
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_WATCHED = "triton.runtime.autotuner"


def _start():
    try:
        from autotune_cache.record import start_from_env
        start_from_env()
    except Exception as e:  # noqa: BLE001 - the command runs on, unrecorded, and says why
        print(f"autotune-cache record: not recording in pid {os.getpid()}: {type(e).__name__}: {e}", file=sys.stderr)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs _start() right after Triton's autotuner module is executed, then leaves sys.meta_path."""

    def find_spec(self, name, path=None, target=None):
        if name != _WATCHED:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def run_then_start(module):
            exec_module(module)
            sys.modules[name] = module
            _start()

        spec.loader.exec_module = run_then_start   # type: ignore[method-assign]  # this one loader's, on purpose
        return spec


if _WATCHED in sys.modules:
    _start()
else:
    sys.meta_path.insert(0, _AfterImport())


def _chain():
    """Run the sitecustomize this one shadows (a distribution's own), as Python would have without us."""
    own = sys.modules.pop(__name__)
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    try:
        importlib.import_module("sitecustomize")
    except ImportError:
        pass
    finally:
        sys.path[:] = saved
        sys.modules.setdefault(__name__, own)


_chain()
