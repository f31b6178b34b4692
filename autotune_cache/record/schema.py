"""A record: one line per distinct (kernel, key) an Autotuner of a live process looked up, with what it takes to
make that lookup again in another process (replay.py). Versioned pydantic models; plain JSON lines on disk
(store.py). Pure: no torch, no triton.

    {"version": 1, "kernel": {"module": "fla.ops.utils.cumsum", "qualname": "chunk_local_cumsum_scalar_kernel",
     ...}, "key": [1, 32, 64, true, false, "torch.float32", ...], "configs": 4, "call": {"args": [...], ...}}
"""
from __future__ import annotations

import json
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

SCHEMA_VERSION: Final = 1
# A key field, a scalar argument, a config's meta-parameter: what JSON keeps apart (True is not 1).
Scalar = StrictBool | StrictInt | StrictFloat | StrictStr | None
_FROZEN = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


class KernelId(BaseModel):
    """Which kernel, found again at replay by module and qualified name, and checked by its source hash.
    Example: module "fla.ops.kda.chunk_intra", qualname "chunk_kda_fwd_kernel_intra_sub_chunk", name (the
    autotune file's stem) the same, file the source path the recording process imported it from."""
    model_config = _FROZEN

    module: str
    qualname: str
    name: str
    file: str | None = None
    source_sha256: str      # sha256 of the JITFunction's source text: a kernel edited since the record is refused
    configs_sha256: str     # sha256 of str() of every config of its Autotuner: tells two autotuners of one kernel apart

    @property
    def label(self) -> str:
        return f"{self.module}.{self.qualname}"


class TensorArg(BaseModel):
    """A tensor by layout. `values` (flattened, logical order) for small integer or bool tensors, which steer
    indexing (cu_seqlens, chunk indices, state slots); other tensors are replayed with random data of the dtype.
    `aligned`: its data pointer was a multiple of 16 bytes (Triton specializes on it)."""
    model_config = _FROZEN

    kind: Literal["tensor"] = "tensor"
    dtype: str                      # "torch.bfloat16"
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int = 0                 # storage offset, in elements
    storage: int                    # storage size, in elements
    aligned: bool = True
    device: str = "cuda"            # the recording process's device type, for the reader: replay uses its own
    values: tuple[Scalar, ...] | None = None
    # Why an index-like tensor's values are missing (e.g. read during CUDA graph capture): the call is not replayable
    values_missing: str | None = None


class ValueArg(BaseModel):
    """An int, float, bool, str or None, passed as it was (constexprs included)."""
    model_config = _FROZEN

    kind: Literal["value"] = "value"
    value: Scalar


class DtypeArg(BaseModel):
    """A dtype passed as an argument: `of` "triton" (tl.float32, name "fp32") or "torch" (name "float32")."""
    model_config = _FROZEN

    kind: Literal["dtype"] = "dtype"
    of: Literal["triton", "torch"]
    name: str


class TupleArg(BaseModel):
    model_config = _FROZEN

    kind: Literal["tuple"] = "tuple"
    items: tuple[Arg, ...]


class OpaqueArg(BaseModel):
    """An argument this schema cannot describe (its type named): the call is not replayable."""
    model_config = _FROZEN

    kind: Literal["opaque"] = "opaque"
    type: str


Arg = Annotated[TensorArg | ValueArg | DtypeArg | TupleArg | OpaqueArg, Field(discriminator="kind")]
TupleArg.model_rebuild()


class Grid(BaseModel):
    """The launch grid of one pruned config: `meta` its meta-parameters (Config.kwargs), `grid` the grid the call's
    grid function gave for them, or `error` why it could not be evaluated."""
    model_config = _FROZEN

    meta: dict[str, Scalar]
    grid: tuple[int, ...] | None = None
    error: str | None = None


class Call(BaseModel):
    """Autotuner.run(*args, grid=..., warmup=False, **kwargs) as the recording process made it."""
    model_config = _FROZEN

    args: tuple[Arg, ...]
    kwargs: dict[str, Arg] = Field(default_factory=dict)
    grids: tuple[Grid, ...] = ()


class Record(BaseModel):
    """One distinct autotune lookup of one process. `file` is the autotune file it looked up ("<base32 sha>/<name>
    .autotune.json", None where the disk cache was off): a replay made in the same environment reaches the same."""
    model_config = _FROZEN

    version: Literal[1] = SCHEMA_VERSION
    kernel: KernelId
    key: tuple[Scalar, ...]          # Triton's tuning key: key=[...] values, then every tensor argument's dtype
    configs: int                     # configs left after pruning (benchmarked on a miss)
    pruned_sha256: str               # sha256 of their str(): with the key, what the disk key hashes
    call: Call
    outcome: Literal["hit", "miss"] | None = None   # miss: not on disk (tuned in process, or refused strict)
    disk_cache: bool = False         # the Autotuner's cache_results at the lookup
    file: str | None = None
    pid: int | None = None
    triton: str | None = None        # triton.__version__ of the recording process

    def identity(self) -> tuple:
        """Two records of one lookup (other processes, other runs) share it: merged as one."""
        k = self.kernel
        return (k.module, k.qualname, k.source_sha256, json.dumps(list(self.key)), self.pruned_sha256)

    def problems(self) -> list[str]:
        """Why this call cannot be made again from its description; [] = replayable as far as the record tells."""
        found = []

        def walk(arg, where):
            if isinstance(arg, OpaqueArg):
                found.append(f"argument {where} is a {arg.type}, which a record cannot describe")
            elif isinstance(arg, TupleArg):
                for i, item in enumerate(arg.items):
                    walk(item, f"{where}[{i}]")
            elif isinstance(arg, TensorArg) and arg.values_missing:
                found.append(f"argument {where}: values not recorded ({arg.values_missing})")

        for i, arg in enumerate(self.call.args):
            walk(arg, f"#{i}")
        for name, arg in self.call.kwargs.items():
            walk(arg, name)
        found += [f"grid of config {g.meta} not evaluated: {g.error}" for g in self.call.grids if g.error]
        return found
