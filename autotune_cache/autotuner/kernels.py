"""Triton's kernel objects as we find our way through them: the `.fn` chain from an Autotuner (through Heuristics)
to its JITFunction, every Autotuner alive in the process, and the dirs a compiled kernel was loaded from."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from triton.runtime.autotuner import Autotuner  # no stubs: Any to mypy, named for the reader
else:
    Autotuner = Any


def innermost_jit(fn: Any) -> Any:
    """The JITFunction at the end of the `.fn` chain (an Autotuner's kernel, under any Heuristics)."""
    from triton.runtime.jit import JITFunction
    while not isinstance(fn, JITFunction):
        fn = fn.fn
    return fn


def live_autotuners() -> list:
    """Every Autotuner object alive in this process (imported kernel modules hold them)."""
    import gc
    import warnings

    from triton.runtime.autotuner import Autotuner
    with warnings.catch_warnings():  # isinstance() on deprecated torch module attributes warns
        warnings.simplefilter("ignore")
        return [o for o in gc.get_objects() if isinstance(o, Autotuner)]


def autotuners_on(obj: Any) -> list:
    """The Autotuner objects on the `.fn` chain from `obj` (a module attribute: Heuristics, Autotuner, JITFunction)."""
    from triton.runtime.autotuner import Autotuner
    found, seen = [], 0
    while obj is not None and seen < 16:
        if isinstance(obj, Autotuner):
            found.append(obj)
        obj, seen = getattr(obj, "fn", None), seen + 1
    return found


def heuristics_under(tuner: Any) -> list:
    """The Heuristics between an Autotuner and its JITFunction: they add meta-parameters the grid may read."""
    from triton.runtime.autotuner import Heuristics
    found, fn = [], tuner.fn
    while hasattr(fn, "fn") and not hasattr(fn, "src"):
        if isinstance(fn, Heuristics):
            found.append(fn)
        fn = fn.fn
    return found


def compiled_dirs(kernel: Any) -> tuple[Path, ...]:
    """Cache dirs holding a CompiledKernel's files. Read from its metadata_group (the absolute paths it was
    loaded from) rather than recomputed from `.hash`: right whichever cache manager answered, and it works
    for a kernel launched from the in-memory JIT cache too."""
    group = getattr(kernel, "metadata_group", None)
    if not isinstance(group, dict):
        return ()
    return tuple(sorted({Path(p).parent for p in group.values()}))
