"""Every AUTOTUNE_CACHE_* environment variable: one typed object (`Settings`), read once per process.

`current()` parses the AUTOTUNE_CACHE_* items of os.environ into a frozen `Settings`; the result is cached on that
snapshot (a dict lookup per call), so parsing, validation and the warning about unknown names happen once per
distinct environment: once in a server, again only where the environment changed (a test's monkeypatch, the
loader pointing the layered cache manager at its base). Every read of an AUTOTUNE_CACHE_* variable in the package
goes through here (tests/test_settings.py greps for any other).

A value that cannot be read (AUTOTUNE_CACHE_TP=x) does not fail the whole object: reading that one attribute
raises its typed error (SpecError for the build request, SettingsError otherwise) with one line naming the
variable, so a server that never reads AUTOTUNE_CACHE_TP is not stopped by it. An unknown AUTOTUNE_CACHE_* name
is warned about once per process (logging, "autotune_cache" logger), naming the closest known one.

The variables outside the package (the entrypoint's, the tests' and scripts') are listed in `OUTSIDE`, so that
docs/settings.md (`python scripts/settings_doc.py` writes it) is the one list for users, and so that
they are not taken for typos.
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from .errors import AutotuneCacheError, SettingsError, SpecError
from .shapes import DEFAULT_MAX_TOKENS, DEFAULT_MODEL

PREFIX = "AUTOTUNE_CACHE_"
TRUE = ("1", "true", "yes", "on")
log = logging.getLogger("autotune_cache")

# Who reads a variable: the processes docs/settings.md names.
SERVER = "server"              # install(), the loader, its layered cache manager (also in Triton's compilers)
PLUGIN = "vLLM plugin"
ENTRYPOINT = "entrypoint"      # docker/entrypoint.sh, the init container
CLI = "CLI"
PARENT = "build parent"
CHILD = "build child"
RECORDED = "recorded process"  # a process started by `autotune-cache record -- CMD`
SCRIPTS = "scripts"
TESTS = "tests"


def _var(name: str, default: Any, meaning: str, read_by: tuple[str, ...], *, kind: str = "user",
         type_: str | None = None, shown_default: str | None = None) -> Any:
    """A Settings field: its env var, what it means, which processes read it; kind "user", "internal" (set by the
    package for a process of its own, never by a user) or "test" (emulated builds, the tests and benchmarks)."""
    extra: dict[str, Any] = {"read_by": list(read_by), "kind": kind}
    if type_ is not None:
        extra["type"] = type_
    if shown_default is not None:
        extra["default"] = shown_default
    return Field(default, alias=PREFIX + name, description=meaning, json_schema_extra=extra)


def _flag(value: Any) -> Any:
    """A yes/no variable: "1", "true", "yes", "on" (any case) say yes, anything else no; unset or empty: the
    default (empty values never reach a validator: `_parse` drops them)."""
    return value.strip().lower() in TRUE if isinstance(value, str) else value


class Settings(BaseModel):
    """The AUTOTUNE_CACHE_* variables of one environment, typed. An unset or empty variable is its default."""
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    # -- serving: the loader and the vLLM plugin ----------------------------------------------------------------
    dir: Path | None = _var(
        "DIR", None, "The cache directory a server reads (install(), the vLLM plugin: set it to turn the plugin "
        "on) and the entrypoint ensures.", (SERVER, PLUGIN, ENTRYPOINT), type_="path")
    strict: bool = _var(
        "STRICT", False, "A miss raises CacheMissError instead of tuning; a refused or incompatible cache, a failed "
        "install() or an unreachable registry is an error (exit 2) instead of a warning. Implies "
        "AUTOTUNE_CACHE_REQUIRE_MANIFEST.", (SERVER, PLUGIN, CLI), type_="flag")
    require_manifest: bool = _var(
        "REQUIRE_MANIFEST", False, "Refuse a cache without manifest.json.", (SERVER, PLUGIN, CLI), type_="flag")
    allow_writable: bool = _var(
        "ALLOW_WRITABLE", False, "Accept a cache (or overlay) that another user owns or can write (refused "
        "otherwise: whoever can write it chooses the kernels the server runs).", (SERVER, PLUGIN, CLI), type_="flag")
    public_key: str | None = _var(
        "PUBLIC_KEY", None, "An ed25519 public key (PEM file): the cache's manifest.sig, or a signed registry's "
        "bundle, must verify with it (implies a manifest). The default of --public-key.", (SERVER, PLUGIN, CLI),
        type_="path")
    allow_emulated: bool = _var(
        "ALLOW_EMULATED", False, "Accept a cache built with --emulate (fake GPU, fake timings: arbitrary winners) "
        "where a check says \"ship it\" (verify, ensure) and in registry fetches. For tests.", (CLI, PLUGIN),
        type_="flag")
    private_copy: bool = _var(
        "COPY", True, "Triton reads a private copy of the checked files (0: the directory itself, reopening the "
        "window between check and load).", (SERVER,), type_="flag")
    overlay: Path | None = _var(
        "OVERLAY", None, "Where the server's own misses are written (and read again).", (SERVER,), type_="path",
        shown_default="<tmp>/autotune-cache-overlay-<uid>/<hash of the cache path>")
    log: bool = _var(
        "LOG", False, "Log what install() did (hits, misses, benchmarks) when the process exits; the vLLM plugin "
        "always does.", (SERVER,), type_="flag")
    record: Path | None = _var(
        "RECORD", None, "Append every autotune lookup of the process to this record file (docs/record.md); set by "
        "`autotune-cache record --out`.", (SERVER, RECORDED), type_="path")
    misses: Path | None = _var(
        "MISSES", None, "Append only the lookups the cache did not answer (what the server still tuned) to this "
        "record file; set by `autotune-cache record --misses`.", (SERVER, RECORDED), type_="path")
    record_max_values: int = _var(
        "RECORD_MAX_VALUES", 1 << 16, "Integer tensors up to this many elements are recorded by value; larger ones "
        "are replayed as zeros.", (SERVER, RECORDED), type_="int")
    # -- pod start: the registry pull of the vLLM plugin, the entrypoint's request -------------------------------
    url: str | None = _var(
        "URL", None, "A registry (fsspec URL: file://, s3://, ...) the vLLM plugin fetches the cache from first, "
        "when AUTOTUNE_CACHE_DIR is missing or stale.", (PLUGIN,), type_="URL")
    model: str | None = _var(
        "MODEL", None, "The model whose cache is fetched (plugin) or ensured (entrypoint): a preset name.",
        (PLUGIN, ENTRYPOINT), type_="name", shown_default=DEFAULT_MODEL)
    config: Path | None = _var(
        "CONFIG", None, "Instead of AUTOTUNE_CACHE_MODEL: a local config.json or snapshot dir.", (PLUGIN, ENTRYPOINT),
        type_="path")
    tp: tuple[int, ...] = _var(
        "TP", (1,), "The tensor-parallel degrees served, comma-separated.", (PLUGIN, ENTRYPOINT), type_="ints",
        shown_default="1")
    target: tuple[str, ...] = _var(
        "TARGET", ("fla",), "The targets (kernel sources) served, comma-separated.", (PLUGIN, ENTRYPOINT),
        type_="names", shown_default="fla")
    max_tokens: int = _var(
        "MAX_TOKENS", DEFAULT_MAX_TOKENS, "The most tokens one call handles.", (PLUGIN, ENTRYPOINT), type_="int")
    gpu_name: str | None = _var(
        "GPU_NAME", None, "The GPU to fetch for (e.g. H200) instead of this machine's: the default of --gpu-name.",
        (CLI, PLUGIN), type_="name")
    capability: str | None = _var(
        "CAPABILITY", None, "The compute capability to fetch for (e.g. 9.0): the default of --capability.",
        (CLI, PLUGIN), type_="major.minor")
    max_bundle_bytes: int = _var(
        "MAX_BUNDLE_BYTES", 4 << 30, "The most bytes a registry fetch downloads (one bundle, whatever its index "
        "entry claims) and a bundle import writes (its files, as its manifest lists them): more is refused before "
        "a byte is written.", (CLI, PLUGIN), type_="int", shown_default="4294967296 (4 GiB)")
    # -- the registry: every remote call (publish, fetch, ls, ensure --from, the vLLM plugin) ---------------------
    registry_connect_timeout: float = _var(
        "REGISTRY_CONNECT_TIMEOUT", 5.0, "Seconds a registry call waits to connect to an object store (s3://) before "
        "it tries again.", (CLI, PLUGIN), type_="seconds")
    registry_read_timeout: float = _var(
        "REGISTRY_READ_TIMEOUT", 15.0, "Seconds a registry call waits for the store's next bytes (a stalled "
        "endpoint) before it tries again.", (CLI, PLUGIN), type_="seconds")
    registry_retries: int = _var(
        "REGISTRY_RETRIES", 2, "Tries after the first of a registry call that timed out or failed to connect, "
        "with exponential backoff (botocore's standard mode); then the fetch falls back, or fails when strict. "
        "A stalled endpoint costs at most (1 + this) x (the two timeouts) plus the backoff: under a minute with the "
        "defaults.", (CLI, PLUGIN), type_="int")
    registry_stale_age: float = _var(
        "REGISTRY_STALE_AGE", 86400.0, "Seconds after which a publish's half-written registry objects (`.*.tmp`) "
        "and incomplete S3 multipart uploads count as abandoned: the next publish, or `ls --gc`, removes them.",
        (CLI,), type_="seconds")
    # -- building ------------------------------------------------------------------------------------------------
    compile_processes: int | None = _var(
        "COMPILE_PROCESSES", None, "Compile worker processes per build child (1: threads only).", (PARENT, CHILD),
        type_="int", shown_default="cores - 1 (emulated builds: 1)")
    compile_workers: int | None = _var(
        "COMPILE_WORKERS", None, "Compile threads in a build child that compiles on threads (--compile-workers).",
        (CHILD,), type_="int", shown_default="cores")
    timeline: Path | None = _var(
        "TIMELINE", None, "Write each child's and unit's timings as JSON here at the end of a build "
        "(scripts/bench_build.py sets it).", (PARENT,), type_="path")
    device_keys: Path | None = _var(
        "DEVICE_KEYS", None, "Emulated builds: another host's disk-key parts (JSON, tests/data), so that an emulated "
        "build makes that host's disk keys.", (CHILD,), kind="test", type_="path")
    fake_times: dict[str, Any] = _var(
        "FAKE_TIMES", {}, "Emulated builds: chosen fake timings, JSON `{\"<config>\": [ms, ...]}` "
        "(builder/emulation.py).", (CHILD,), kind="test", type_="JSON", shown_default="{}")
    # -- internal: set by the package for a process of its own ---------------------------------------------------
    base: Path | None = _var(
        "BASE", None, "The checked cache the layered cache manager reads first; the loader sets it in the server "
        "beside TRITON_CACHE_MANAGER.", (SERVER,), kind="internal", type_="path")

    @field_validator("strict", "require_manifest", "allow_writable", "allow_emulated", "private_copy", "log",
                     mode="before")
    @classmethod
    def _flags(cls, value: Any) -> Any:
        return _flag(value)

    @field_validator("tp", "target", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else value

    @field_validator("fake_times", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("compile_processes", "compile_workers", "max_tokens", "max_bundle_bytes")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be a positive integer")
        return value

    @field_validator("registry_connect_timeout", "registry_read_timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if not 0 < value <= 3600:
            raise ValueError("must be seconds, more than 0 and at most 3600")
        return value

    @field_validator("registry_stale_age")
    @classmethod
    def _age(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be 0 or more seconds")
        return value

    @field_validator("registry_retries")
    @classmethod
    def _retries(cls, value: int) -> int:
        if not 0 <= value <= 10:
            raise ValueError("must be 0 to 10")
        return value

    @field_validator("record_max_values")
    @classmethod
    def _count(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be 0 or more")
        return value

    _invalid: dict[str, AutotuneCacheError] = PrivateAttr(default_factory=dict)

    if not TYPE_CHECKING:   # a __getattr__ mypy saw would make every attribute name valid
        def __getattr__(self, name: str) -> Any:
            """A field whose value was not read: its typed error (_parse took the field out of __dict__)."""
            invalid = (self.__pydantic_private__ or {}).get("_invalid", {})
            if name in invalid:   # a fresh error each time: one raised again would pile up tracebacks
                raise type(invalid[name])(str(invalid[name])) from None
            return super().__getattr__(name)

    def __repr_args__(self):
        return [(k, v) for k, v in super().__repr_args__() if k in self.__dict__]

    @property
    def invalid(self) -> dict[str, str]:
        """Variable name -> why its value was not read (reading its attribute raises that)."""
        return {env_name(field): str(e) for field, e in self._invalid.items()}


# Where a bad value raises what it raised before there was a settings object: the build request's SpecError.
_ERRORS: dict[str, type[AutotuneCacheError]] = {"tp": SpecError, "max_tokens": SpecError}


@dataclass(frozen=True)
class Outside:
    """A variable the package does not read: the entrypoint's, the scripts' and the tests'."""
    name: str
    type: str
    default: str
    meaning: str
    read_by: tuple[str, ...]
    kind: str   # "user", "test"


OUTSIDE = (
    Outside("AUTOTUNE_CACHE_ENSURE", "flag", "1", "0: the entrypoint skips `autotune-cache ensure` and only starts "
            "the server (which still reads the cache through the plugin / install()).", (ENTRYPOINT,), "user"),
    Outside("AUTOTUNE_CACHE_GPU_DIR", "path", "a temp dir", "GPU tests (tests/gpu): keep their build here.",
            (TESTS,), "test"),
    Outside("AUTOTUNE_CACHE_FAULT", "<unit>:<kind>[:always]", "", "Fault injection into a build child's unit "
            "(tests/faults.py, through the child's unit hooks; kinds: raise, segfault, exit, hang, oom, oom-kill, "
            "gpu-fault).", (TESTS,), "test"),
    Outside("AUTOTUNE_CACHE_TEST_TAG", "text", "", "Marks the processes a test's build started (tests/test_faults.py).",
            (TESTS,), "test"),
    Outside("AUTOTUNE_CACHE_TEST_RECORD", "path", "", "The shard toy kernels log their calls here "
            "(tests/toy_shard_kernels.py).", (TESTS,), "test"),
    Outside("AUTOTUNE_CACHE_TEST_BARRIER", "<dir>:<n>", "", "The shard toy kernels wait for n children at their "
            "first benchmark (tests/toy_shard_kernels.py).", (TESTS,), "test"),
)


def env_name(field: str) -> str:
    """The variable of a Settings field: env_name("dir") == "AUTOTUNE_CACHE_DIR"."""
    alias = Settings.model_fields[field].alias
    assert alias is not None
    return alias


def known() -> tuple[str, ...]:
    """Every AUTOTUNE_CACHE_* name this project reads somewhere."""
    return tuple(env_name(f) for f in Settings.model_fields) + tuple(o.name for o in OUTSIDE)


def _parse(items: tuple[tuple[str, str], ...]) -> Settings:
    """A Settings from AUTOTUNE_CACHE_* items, each bad value kept aside as its typed error (raised on access)."""
    fields = {env_name(f): f for f in Settings.model_fields}
    raw = {name: value for name, value in items if name in fields and value.strip()}
    invalid: dict[str, AutotuneCacheError] = {}
    while True:
        try:
            settings = Settings.model_validate(raw)
            break
        except ValidationError as e:
            for error in e.errors():
                name = str(error["loc"][0])
                field = fields[name]
                why = str(error.get("ctx", {}).get("error") or error["msg"]).removeprefix("Value error, ")
                invalid[field] = _ERRORS.get(field, SettingsError)(f"{name}={raw.pop(name)[:60]!r}: {why}")
    for field in invalid:
        del settings.__dict__[field]
    settings._invalid = invalid
    return settings


_lock = threading.Lock()
_parsed: dict[tuple[tuple[str, str], ...], Settings] = {}
_warned: set[str] = set()
_KEEP = 64   # distinct environments kept (a test run sees hundreds; a server one or two)


def current() -> Settings:
    """The settings of this process's environment now: parsed once per distinct set of AUTOTUNE_CACHE_* items."""
    items = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(PREFIX)))
    found = _parsed.get(items)
    if found is not None:
        return found
    with _lock:
        found = _parsed.get(items)
        if found is None:
            _warn_unknown(name for name, _ in items)
            found = _parse(items)
            if len(_parsed) >= _KEEP:
                _parsed.clear()
            _parsed[items] = found
    return found


def _warn_unknown(names) -> None:
    """One warning per unknown AUTOTUNE_CACHE_* name per process, naming the closest known one."""
    names_known = known()
    for name in names:
        if name in names_known or name in _warned:
            continue
        _warned.add(name)
        # the part after the prefix: every name shares the prefix, which would make any two look alike
        close = difflib.get_close_matches(name.removeprefix(PREFIX), [n.removeprefix(PREFIX) for n in names_known],
                                          n=1, cutoff=0.6)
        hint = f" (did you mean {PREFIX}{close[0]}?)" if close else ""
        log.warning("autotune-cache: unknown environment variable %s ignored%s; every variable: docs/settings.md",
                    name, hint)


# -- docs/settings.md --------------------------------------------------------------------------------------------
def _rows() -> list[tuple[str, str, str, str, str, str]]:
    """(name, type, default, kind, read by, meaning) of every variable, in the order docs/settings.md lists them."""
    rows = []
    for field, info in Settings.model_fields.items():
        extra = info.json_schema_extra
        assert isinstance(extra, dict)
        default = extra.get("default")
        if default is None:
            value = info.default
            default = "" if value is None else ("1" if value is True else "0" if value is False else str(value))
        rows.append((env_name(field), str(extra.get("type", "")), str(default), str(extra["kind"]),
                     ", ".join(map(str, extra["read_by"])), info.description or ""))   # type: ignore[arg-type]
    rows += [(o.name, o.type, o.default, o.kind, ", ".join(o.read_by), o.meaning) for o in OUTSIDE]
    return rows


HEADER = """# Settings: every `AUTOTUNE_CACHE_*` environment variable

Generated from `autotune_cache/settings.py` by `python scripts/settings_doc.py` (tests/test_settings.py fails
when this file differs). Each process reads the variables once, into one typed
object; a bad value fails only where it is read, with one line naming the variable; an unknown
`AUTOTUNE_CACHE_*` name is warned about once, naming the closest known one. Flags: `1`, `true`, `yes`, `on` say
yes (any case), anything else no; an empty variable is an unset one.

Kinds: **user** (yours to set), **internal** (the package sets it for a process of its own: never set it),
**test** (for this repository's tests and benchmarks: emulated builds, fault injection; a server never needs it).

Processes: *server* (install(), the loader and its layered cache manager, in the serving process and the compile
subprocesses Triton starts), *vLLM plugin*, *entrypoint* (docker/entrypoint.sh, an init container), *CLI*
(`autotune-cache` commands), *build parent* (the process running a build), *build child* (one per GPU, and its
compile workers), *recorded process* (any Python process under `autotune-cache record -- CMD`).

Besides these, the package passes Triton's own variables to the processes it points at a cache
(`TRITON_CACHE_DIR`, `TRITON_CACHE_MANAGER`, `TRITON_CACHE_AUTOTUNING`): the loader sets them in the server
(docs/serving.md), a build child in itself.
"""


def markdown() -> str:
    """docs/settings.md."""
    lines = [HEADER, "| variable | type | default | kind | read by | meaning |", "|---|---|---|---|---|---|"]
    for name, type_, default, kind, read_by, meaning in _rows():
        cells = [f"`{name}`", f"`{type_}`" if "<" in type_ else type_, f"`{default}`" if default else "", kind,
                 read_by, meaning]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
