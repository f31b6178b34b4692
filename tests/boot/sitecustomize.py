"""The tests' start-up hook: tests/conftest.py puts this folder first on PYTHONPATH, so every Python process the
tests start (a CLI, the build's fork server, a stand-in server) runs it. Once autotune_cache.builder.child is
imported (the fork server preloads it before forking any build child), the tests' fault injection (tests/faults.py)
is added to the child's unit hooks; a process that never imports it pays nothing. Then the sitecustomize this one
shadows, if any, runs as it would have. The import hook and the chaining are record/boot's
(autotune_cache_startup.py), loaded from its file: importing autotune_cache here would cost every process."""
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_package = importlib.util.find_spec("autotune_cache")   # found, not imported
assert _package is not None and _package.submodule_search_locations
_spec = importlib.util.spec_from_file_location(
    "autotune_cache_startup",
    os.path.join(list(_package.submodule_search_locations)[0], "record", "boot", "autotune_cache_startup.py"))
assert _spec is not None and _spec.loader is not None
_startup = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_startup)


def _register():
    sys.path.insert(0, os.path.dirname(_HERE))   # tests/: faults.py
    try:
        import faults
    finally:
        sys.path.remove(os.path.dirname(_HERE))
    faults.register()


_startup.after_import("autotune_cache.builder.child", _register)
_startup.chain(_HERE)
