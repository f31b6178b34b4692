"""The tests' start-up hook: tests/conftest.py puts this folder first on PYTHONPATH, so every Python process the
tests start (a CLI, the build's fork server, a stand-in server) runs it. Once autotune_cache.builder.child is
imported (the fork server preloads it before forking any build child), the tests' fault injection (tests/faults.py)
is added to the child's unit hooks; a process that never imports it pays nothing. Then the sitecustomize this one
shadows, if any, runs as it would have (autotune_cache/record/boot/sitecustomize.py does the same)."""
import importlib.abc
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_WATCHED = "autotune_cache.builder.child"


def _register():
    sys.path.insert(0, os.path.dirname(_HERE))   # tests/: faults.py
    try:
        import faults
    finally:
        sys.path.remove(os.path.dirname(_HERE))
    faults.register()


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs _register() right after the child module is executed, then leaves sys.meta_path."""

    def find_spec(self, name, path=None, target=None):
        if name != _WATCHED:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def run_then_register(module):
            exec_module(module)
            sys.modules[name] = module
            _register()

        spec.loader.exec_module = run_then_register
        return spec


if _WATCHED in sys.modules:
    _register()
else:
    sys.meta_path.insert(0, _AfterImport())


def _chain():
    """Run the sitecustomize this one shadows, as Python would have without us."""
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
