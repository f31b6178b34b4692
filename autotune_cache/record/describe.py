"""Live call -> record (schema.py): the kernel's identity, every argument, the grid of every pruned config. Runs in
the recording process on the first lookup of each key only, so it may read small index tensors' values (a GPU
sync) and hash the kernel's source."""
from __future__ import annotations

import hashlib
import inspect
import numbers
from typing import Any

from .. import settings
from ..autotuner.kernels import heuristics_under, innermost_jit
from .schema import Arg, Call, DtypeArg, Grid, KernelId, OpaqueArg, Scalar, TensorArg, TupleArg, ValueArg

# Integer tensors up to this many elements are recorded by value (cu_seqlens, chunk indices: a few thousand at
# 32k tokens); larger ones are replayed as zeros (an index that is always valid).
MAX_VALUES = 1 << 16   # the default of AUTOTUNE_CACHE_RECORD_MAX_VALUES (settings.py)
_INDEX_DTYPES = ("torch.int8", "torch.int16", "torch.int32", "torch.int64", "torch.uint8", "torch.bool")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def max_values() -> int:
    return settings.current().record_max_values


def kernel_id(tuner) -> KernelId:
    jit = innermost_jit(tuner.fn)
    fn = getattr(jit, "fn", None)
    code = getattr(fn, "__code__", None)
    return KernelId(module=jit.__module__ or "", qualname=getattr(fn, "__qualname__", jit.__name__),
                    name=jit.__name__, file=code.co_filename if code is not None else None,
                    source_sha256=_sha256(jit.src),
                    configs_sha256=configs_sha256(tuner.configs))


def configs_sha256(configs) -> str:
    return _sha256("\n".join(str(c) for c in configs))


def _scalar(value) -> tuple[bool, Scalar]:
    if value is None or isinstance(value, (bool, str)):
        return True, value
    if isinstance(value, numbers.Integral):
        return True, int(value)
    if isinstance(value, numbers.Real):
        return True, float(value)
    return False, None


def _capturing() -> bool:
    try:
        import torch
        return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    except Exception:  # noqa: BLE001 - no CUDA: nothing is captured
        return False


def describe(value, cap: int) -> Arg:
    """One argument as the schema holds it; an OpaqueArg for anything else (the record is then not replayable)."""
    ok, scalar = _scalar(value)
    if ok:
        return ValueArg(value=scalar)
    import sys
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return _tensor(value, cap)
    if torch is not None and isinstance(value, torch.dtype):
        return DtypeArg(of="torch", name=str(value).removeprefix("torch."))
    try:
        import triton.language as tl
        if isinstance(value, tl.dtype):
            return DtypeArg(of="triton", name=value.name)
        if isinstance(value, tl.constexpr):
            return describe(value.value, cap)
    except ImportError:
        pass
    if isinstance(value, tuple):
        return TupleArg(items=tuple(describe(v, cap) for v in value))
    return OpaqueArg(type=f"{type(value).__module__}.{type(value).__qualname__}")


def _tensor(t, cap: int) -> TensorArg:
    dtype = str(t.dtype)
    values = missing = None
    if dtype in _INDEX_DTYPES and t.numel() <= cap:
        if t.is_cuda and _capturing():   # reading it would break the capture
            missing = "read during CUDA graph capture"
        else:
            values = tuple(t.detach().flatten().tolist())
    storage = t.untyped_storage().nbytes() // max(1, t.element_size())
    return TensorArg(dtype=dtype, shape=tuple(t.shape), stride=tuple(t.stride()), offset=t.storage_offset(),
                     storage=storage, aligned=t.data_ptr() % 16 == 0, device=t.device.type, values=values,
                     values_missing=missing)


def _jit_defaults(jit) -> dict:
    try:
        params = inspect.signature(jit.fn).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def grids(tuner, nargs: dict, kwargs: dict, configs) -> tuple[Grid, ...]:
    """The grid of every config, evaluated as JITFunction.run would: on the bound arguments (defaults, the call's
    arguments, the config's meta-parameters and the values of heuristics under the autotuner)."""
    grid: Any = kwargs.get("grid")   # a tuple or a function of the meta-parameters (none: the error is recorded)
    jit = innermost_jit(tuner.fn)
    base = {**_jit_defaults(jit), **nargs, **{k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}}
    inner = heuristics_under(tuner)
    out = []
    for config in configs:
        meta = {k: _scalar(v)[1] for k, v in config.kwargs.items()}
        try:
            bound = {**base, **config.all_kwargs()}
            for h in inner:
                for name, heur in h.values.items():
                    bound[name] = heur(dict(bound))
            bound = {name: bound[name] for name in jit.arg_names if name in bound}
            value = grid(bound) if callable(grid) else grid
            out.append(Grid(meta=meta, grid=tuple(int(x) for x in value)))
        except Exception as e:  # noqa: BLE001 - a grid function we cannot evaluate: said in the record
            out.append(Grid(meta=meta, error=f"{type(e).__name__}: {e}"[:300]))
    return tuple(out)


def call(tuner, nargs: dict, kwargs: dict, configs, cap: int | None = None) -> Call:
    cap = max_values() if cap is None else cap
    return Call(args=tuple(describe(v, cap) for v in nargs.values()),
                kwargs={k: describe(v, cap) for k, v in kwargs.items() if k not in ("grid", "warmup")},
                grids=grids(tuner, nargs, kwargs, configs))
