"""Triton's compiler as the build uses it: compiling on threads (AsyncCompileMode), and each compile as it
happens (`listen`: a `Compile` record, through Triton's public compilation listener), counted (`count`)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Compile:
    """One kernel variant this process compiled, or loaded from Triton's cache dir, as Triton's listener tells it."""
    name: str          # the kernel's name, "toy_scale_kernel" ("?" where Triton's event names none)
    cache_hit: bool    # True: loaded from the cache dir, nothing compiled
    seconds: float     # Triton's own timing of it (CompileTimes.total, microseconds, as seconds): 0.0 if none given


def async_compile(executor: Any) -> Any:
    """A context inside which JIT compiles go to `executor` and launches wait for them (Triton >= 3.5's
    AsyncCompileMode; private: the only way to compile several configs of one kernel at once in a process), or
    None where this Triton has none. Compile errors are left to the launch (ignore_errors)."""
    try:
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:
        return None
    return AsyncCompileMode(executor, ignore_errors=True)


def can_compile_async() -> bool:
    try:
        import triton.runtime._async_compile  # noqa: F401
    except ImportError:
        return False
    return True


def listen(fn: Callable[[Compile], None]) -> bool:
    """Call `fn(Compile)` for every kernel this process compiles or loads from the cache from now on, then hand the
    event on to a listener set before. Through Triton's public compilation listener (3.5+), one slot per process;
    False where this Triton has none (nothing is told)."""
    try:
        import triton
        knobs = triton.knobs.compilation
    except AttributeError:
        return False
    previous = getattr(knobs, "listener", None)

    def listener(**kwargs: Any) -> None:
        src, times = kwargs.get("src"), kwargs.get("times")
        fn(Compile(name=str(getattr(src, "name", "?")), cache_hit=bool(kwargs.get("cache_hit")),
                   seconds=(getattr(times, "total", 0) or 0) / 1e6))
        if previous is not None:
            previous(**kwargs)

    knobs.listener = listener
    return True


def count() -> dict[str, int] | None:
    """Count the kernels this process compiles from now on (not those found in the cache): {"compiled": n}, live.
    None where this Triton has no compilation listener (the count is unknown)."""
    counts = {"compiled": 0}

    def compiled(event: Compile) -> None:
        if not event.cache_hit:
            counts["compiled"] += 1

    return counts if listen(compiled) else None
