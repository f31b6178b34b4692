"""What a start-up hook (a `sitecustomize` put first on PYTHONPATH) needs, with no import of autotune_cache itself:
a process that never imports the watched module pays nothing. Used by record/boot/sitecustomize.py (`autotune-cache
record -- CMD`) and by the tests' fault hook (tests/boot/sitecustomize.py). Top-level by its own folder on sys.path,
hence the long name."""
import importlib
import importlib.abc
import importlib.util
import os
import sys


def after_import(watched, run):
    """Call `run()` right after module `watched` is executed (at once if it is already imported)."""
    if watched in sys.modules:
        run()
    else:
        sys.meta_path.insert(0, _AfterImport(watched, run))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs its function right after the watched module is executed, then leaves sys.meta_path."""

    def __init__(self, watched, run):
        self.watched, self.run = watched, run

    def find_spec(self, name, path=None, target=None):
        if name != self.watched:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def run_after(module):
            exec_module(module)
            sys.modules[name] = module
            self.run()

        spec.loader.exec_module = run_after   # type: ignore[method-assign]  # this one loader's, on purpose
        return spec


def chain(here, name="sitecustomize"):
    """Run the sitecustomize that the one in folder `here` shadows (a distribution's own), as Python would have."""
    own = sys.modules.pop(name)
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        importlib.import_module(name)
    except ImportError:
        pass
    finally:
        sys.path[:] = saved
        sys.modules.setdefault(name, own)
