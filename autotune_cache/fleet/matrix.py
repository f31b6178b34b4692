"""A fleet matrix (TOML) and the build jobs it plans: pure, no Ray, no GPU.

    models = ["qwen3.5-9b", "/models/my-model/config.json"]   # presets or config.json paths / snapshot dirs
    tp = [1, 2, 4, 8]
    targets = ["fla"]
    max_tokens = 16384
    gpu_types = ["H200", "H100"]          # Ray accelerator types (`accelerator_type:H200` node resources)
    registry = "s3://bucket/gdn"          # optional; `fleet build --registry` wins
    emulate = false                       # tests: fake sm_90 GPUs, fake timings
    timeout = 1800                        # per unit, as `build --timeout`
    retries = 1

One row per GPU type x model x TP. Rows whose plans have the same units (models with the same per-rank shape: the
Qwen3.5 4B, 9B and 35B-A3B at one TP) share one job per GPU type: one build serves them all, and fetch finds it by
its units whatever model asks.
"""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .. import shapes
from ..builder.plan import plan as make_plan
from ..builder.spec import DEFAULT_MAX_TOKENS, BuildSpec
from ..errors import AutotuneCacheError, SpecError

MAX_MATRIX_BYTES = 1 << 20


class Matrix(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    models: tuple[str, ...]
    tp: tuple[int, ...] = (1,)
    targets: tuple[str, ...] = ("fla",)
    max_tokens: int = DEFAULT_MAX_TOKENS
    gpu_types: tuple[str, ...]
    registry: str | None = None
    emulate: bool = False
    timeout: float = 1800.0
    retries: int = 1

    @field_validator("models", "gpu_types", "tp")
    @classmethod
    def _not_empty(cls, v):
        if not v:
            raise ValueError("must not be empty")
        return tuple(dict.fromkeys(v))

    @field_validator("gpu_types")
    @classmethod
    def _gpu_names(cls, v):
        from ..registry.index import _NAME
        for g in v:
            if not _NAME.match(g):
                raise ValueError(f"GPU type {g!r:.40}: letters, digits, '.', '_' or '-' (as Ray names them: H200)")
        return v


class Row(BaseModel):
    """One GPU type x model x TP of the matrix, and the job that builds it."""
    model_config = ConfigDict(frozen=True)
    gpu_type: str
    model: str
    tp: int
    job: int


class Job(BaseModel):
    """One build on one GPU of `gpu_type`: a BuildSpec's worth of units. Example: H200, qwen3.5-9b at TP 2."""
    model_config = ConfigDict(frozen=True)
    index: int
    gpu_type: str
    spec: BuildSpec                # cache_dir unset: the node picks one
    label: str                     # the models it serves, "qwen3.5-4b,qwen3.5-9b"
    rows: tuple[Row, ...]
    units: tuple[str, ...]
    keys: int
    configs: int

    def as_dict(self) -> dict:
        return {"job": self.index, "gpu_type": self.gpu_type, "models": self.label, "tp": list(self.spec.tp),
                "units": len(self.units), "keys": self.keys, "configs": self.configs,
                "rows": [r.model_dump() for r in self.rows]}


def parse(text: str, where: str = "matrix") -> Matrix:
    try:
        import tomllib  # type: ignore[import-not-found]  # Python 3.11+; mypy checks as 3.10, answered below
    except ImportError:   # Python 3.10
        raise SpecError("a fleet matrix is TOML, read with tomllib: Python 3.11 or newer") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{where}: not TOML ({e})") from None
    data = data.get("fleet", data) if isinstance(data.get("fleet"), dict) else data
    try:
        return Matrix.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "matrix"
        raise SpecError(f"{where}: {loc}: {first['msg']}") from None


def load(path: str | os.PathLike) -> Matrix:
    p = Path(path).expanduser()
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_MATRIX_BYTES + 1)
    except OSError as e:
        raise SpecError(f"{p}: cannot read the matrix ({e.strerror or e})") from None
    if len(data) > MAX_MATRIX_BYTES:
        raise SpecError(f"{p}: larger than {MAX_MATRIX_BYTES} bytes, the most a matrix may be")
    try:
        return parse(data.decode(), str(p))
    except UnicodeDecodeError:
        raise SpecError(f"{p}: not UTF-8 text") from None


def _shape(name: str) -> shapes.ModelShape:
    looks_like_path = name.endswith(".json") or os.sep in name or Path(name).is_dir()
    return shapes.resolve(None, name) if looks_like_path else shapes.resolve(name, None)


def jobs(m: Matrix) -> list[Job]:
    """The matrix's jobs, one per GPU type and distinct set of planned units, in matrix order."""
    specs: dict[tuple, dict] = {}
    for model_name in m.models:
        shape = _shape(model_name)
        for tp in m.tp:
            try:
                spec = BuildSpec(model=shape, tp=(tp,), targets=m.targets, max_tokens=m.max_tokens,
                                 emulate=m.emulate, unit_timeout_s=m.timeout, retries=m.retries)
                p = make_plan(spec)
            except AutotuneCacheError as e:
                raise SpecError(f"{model_name} at TP {tp}: {e}") from None
            units = tuple(u.id for u in p.units)
            slot = specs.setdefault(units, {"spec": spec, "plan": p, "rows": []})
            slot["rows"].append((model_name, tp))
    out: list[Job] = []
    for gpu in m.gpu_types:
        for units, s in specs.items():
            i = len(out)
            rows = tuple(Row(gpu_type=gpu, model=name, tp=tp, job=i) for name, tp in s["rows"])
            out.append(Job(index=i, gpu_type=gpu, spec=s["spec"], units=units, rows=rows,
                           label=",".join(dict.fromkeys(r.model for r in rows)),
                           keys=s["plan"].keys, configs=s["plan"].configs))
    return out


def totals(js: list[Job]) -> dict:
    return {"jobs": len(js), "rows": sum(len(j.rows) for j in js), "units": sum(len(j.units) for j in js),
            "keys": sum(j.keys for j in js), "configs": sum(j.configs for j in js),
            "gpu_types": len({j.gpu_type for j in js})}


def table(js: list[Job]):
    from rich.table import Table
    t = Table(title="fleet plan: " + ", ".join(f"{k} {v}" for k, v in totals(js).items()))
    for col in ("job", "GPU type", "models", "TP", "units", "keys", "configs"):
        t.add_column(col)
    for j in js:
        t.add_row(str(j.index), j.gpu_type, j.label, ",".join(str(t) for t in sorted({r.tp for r in j.rows})),
                  str(len(j.units)), str(j.keys), str(j.configs))
    return t
