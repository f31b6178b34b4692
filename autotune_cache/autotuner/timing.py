"""How an Autotuner times one config: its `do_bench` (the driver's benchmarker unless the kernel's author gave one)
through `_bench` (Triton's pre/post hooks, the launch, do_bench's quantiles), and the errors that make a config
one that cannot run. The build child's selection rule (builder/selection.py) times candidates again with other
budgets."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def active_benchmarker() -> Callable:
    """The active driver's benchmarker: what an Autotuner whose author gave no do_bench times with (the fake GPU's
    under emulation). bench(fn, quantiles=...) -> times in ms."""
    from triton.runtime.driver import driver  # what Autotuner.do_bench falls back to
    return driver.active.get_benchmarker()


def config_errors() -> tuple[type[Exception], ...]:
    """The errors that mean a config cannot run on this GPU (out of resources, a compile-time assertion, ptxas
    failing): Triton's `_bench` times such a config as inf, vLLM's force_first_config goes on to the next."""
    from triton.compiler.errors import CompileTimeAssertionFailure
    from triton.runtime.errors import OutOfResources, PTXASError
    return (OutOfResources, CompileTimeAssertionFailure, PTXASError)


def driver_benchmarker(tuner: Any) -> Callable | None:
    """The driver's benchmarker when this autotuner times with it (its author gave no do_bench) and it takes a
    `rep` budget; else None. Private: whether a do_bench was given is only in `_do_bench` (3.4-3.9)."""
    if tuner._do_bench is not None:
        return None
    bench = active_benchmarker()
    params = inspect.signature(bench).parameters
    return bench if "rep" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()) else None


def set_do_bench(tuner: Any, bench: Callable | None) -> None:
    """Time this autotuner's configs with `bench` (None: as Triton would). `do_bench` is a cached_property read at
    each benchmark: the instance attribute is its value, the public one the constructor's do_bench= sets."""
    if bench is None:
        tuner.__dict__.pop("do_bench", None)
    else:
        tuner.__dict__["do_bench"] = bench


def own_do_bench(tuner: Any) -> Callable | None:
    """The do_bench set on this autotuner (set_do_bench, or Triton's cached one), if any."""
    return tuner.__dict__.get("do_bench")


def time_config(tuner: Any, args: list, config: Any, kwargs: dict) -> Any:
    """One timing of `config` as the autotuner's benchmark makes it: [p50, p20, p80] in ms (inf if it fails).
    Private: `_bench` is the only way to time one config with the kernel's own hooks (3.4-3.9)."""
    return tuner._bench(*args, config=config, **kwargs)
