"""Triton's compiler as the build uses it: compiling on threads (AsyncCompileMode) and counting compiles."""
from __future__ import annotations

from typing import Any


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


def count() -> dict[str, int] | None:
    """Count the kernels this process compiles from now on (not those found in the cache): {"compiled": n}, live.
    Through Triton's public compilation listener (3.5+), handing each event on to a listener set before; None
    where this Triton has none (the count is unknown)."""
    counts = {"compiled": 0}
    try:
        import triton
        knobs = triton.knobs.compilation
    except AttributeError:
        return None
    previous = getattr(knobs, "listener", None)

    def listener(**kwargs: Any) -> None:
        if not kwargs.get("cache_hit"):
            counts["compiled"] += 1
        if previous is not None:
            previous(**kwargs)

    knobs.listener = listener
    return counts
