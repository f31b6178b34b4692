"""A recorded lookup made again: import the kernel's module, find its Autotuner, make arguments of the recorded
layout and call it as the recording process did. Runs inside a build child (or a compile worker) with the GPU (or
the fake one) set up. UnreplayableError names the kernel and why, for everything a record cannot be made from."""
from __future__ import annotations

import importlib

from ..autotuner.kernels import autotuners_on, innermost_jit, live_autotuners
from ..errors import UnreplayableError
from .schema import Arg, DtypeArg, OpaqueArg, Record, TensorArg, TupleArg, ValueArg

# Storage of a recorded view is allocated whole up to this many bytes; past it (a view into a server's KV-cache
# pool) only the span the view covers, placed at the recorded pointer alignment.
MAX_STORAGE_BYTES = 1 << 30


def find(record: Record):
    """The live Autotuner the record's kernel names, or UnreplayableError (module not importable, no such kernel,
    source changed)."""
    from .describe import kernel_id
    k = record.kernel
    try:
        module = importlib.import_module(k.module)
    except Exception as e:  # noqa: BLE001 - any import failure makes the kernel unreplayable, named
        raise UnreplayableError(f"{k.label}: module {k.module} does not import here ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from None
    candidates = autotuners_on(getattr(module, k.name, None))
    if not candidates:   # defined in a class or a function, or bound under another name: any live one
        candidates = [t for t in live_autotuners() if innermost_jit(t.fn).__module__ == k.module]
    ids = [(t, kernel_id(t)) for t in candidates]
    named = [(t, i) for t, i in ids if i.qualname == k.qualname]
    if not named:
        raise UnreplayableError(f"{k.label}: no autotuned kernel {k.qualname} in module {k.module} here")
    same = [(t, i) for t, i in named if i.source_sha256 == k.source_sha256]
    if not same:
        raise UnreplayableError(f"{k.label}: its source changed since the record (sha256 {k.source_sha256[:12]} "
                                f"recorded, {named[0][1].source_sha256[:12]} here); record it again")
    # Two autotuners of one kernel (other config lists) are told apart by their configs
    return next((t for t, i in same if i.configs_sha256 == k.configs_sha256), same[0][0])


def _tensor(arg: TensorArg, device: str):
    import torch
    dtype = getattr(torch, arg.dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise UnreplayableError(f"tensor dtype {arg.dtype} is not a torch dtype here")
    span = 1 + sum((s - 1) * st for s, st in zip(arg.shape, arg.stride, strict=True)) if all(arg.shape) else 0
    size = dtype.itemsize if hasattr(dtype, "itemsize") else torch.empty((), dtype=dtype).element_size()
    if arg.storage * size <= MAX_STORAGE_BYTES and arg.storage >= arg.offset + span:
        storage, offset = arg.storage, arg.offset
    else:   # the pointer's alignment to 16 bytes (what Triton specializes on) kept, the rest of the storage not
        offset = 0 if arg.aligned else 1
        storage = offset + span
    if dtype.is_floating_point or dtype.is_complex:
        base = torch.randn(storage, device=device).to(dtype) if storage else torch.empty(0, dtype=dtype, device=device)
    else:
        base = torch.zeros(storage, dtype=dtype, device=device)
    view = base.as_strided(arg.shape, arg.stride, offset)
    if arg.values is not None:
        view.copy_(torch.tensor(arg.values, dtype=dtype, device=device).reshape(arg.shape))
    return view


def _value(arg: Arg, device: str):
    if isinstance(arg, ValueArg):
        return arg.value
    if isinstance(arg, TensorArg):
        return _tensor(arg, device)
    if isinstance(arg, DtypeArg):
        if arg.of == "torch":
            import torch
            return getattr(torch, arg.name)
        import triton.language as tl
        return tl.dtype(arg.name)
    if isinstance(arg, TupleArg):
        return tuple(_value(a, device) for a in arg.items)
    assert isinstance(arg, OpaqueArg)
    raise UnreplayableError(f"an argument of type {arg.type} was not described")


def arguments(record: Record, device: str):
    """(args, kwargs, grid) for Autotuner.run, made from the record."""
    args = [_value(a, device) for a in record.call.args]
    kwargs = {name: _value(a, device) for name, a in record.call.kwargs.items()}
    grids = record.call.grids

    def grid(meta):
        for g in grids:
            if all(meta.get(k) == v for k, v in g.meta.items()):
                if g.grid is None:
                    raise UnreplayableError(f"{record.kernel.label}: the grid of config {g.meta} was not "
                                            f"recorded ({g.error})")
                return g.grid
        raise UnreplayableError(f"{record.kernel.label}: no recorded grid for the meta-parameters "
                                f"{ {k: meta.get(k) for k in grids[0].meta} if grids else {} }")

    return args, kwargs, grid


def replay(record: Record, device: str, tuner=None) -> None:
    """Make the record's call: its Autotuner looks the key up (a miss tunes it, into TRITON_CACHE_DIR)."""
    problems = record.problems()
    if problems:
        raise UnreplayableError(f"{record.kernel.label}: {problems[0]}")
    tuner = tuner or find(record)
    args, kwargs, grid = arguments(record, device)
    tuner.run(*args, grid=grid, warmup=False, **kwargs)


def replay_all(records, device: str) -> None:
    """Every record of one kernel (a replay unit), the Autotuner found once."""
    tuner = None
    for record in records:
        tuner = tuner if tuner is not None else find(record)
        replay(record, device, tuner)
