"""Record files: JSON lines, appended by many processes at once (TP workers, a server's engine and its workers),
read and merged into one deduplicated list. Pure: no torch, no triton.

An append is one write() of one whole line under an exclusive flock on the file itself (no lock file beside
it): lines of concurrent writers never interleave, and a reader never sees half a line of a finished writer.
"""
from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ..bounded_json import json_value, one_line
from ..errors import RecordError
from .schema import SCHEMA_VERSION, Record

# A line past this is refused when read (index values are capped far below it: describe.MAX_VALUES).
MAX_LINE_BYTES = 64 << 20


def open_for_append(path: str | os.PathLike) -> Path:
    """The absolute path of a record file that this process can append to (created, mode 0644), or RecordError."""
    path = Path(path).expanduser().absolute()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        os.close(fd)
    except OSError as e:
        raise RecordError(f"cannot write the record file {path}: {e.strerror or e}") from None
    return path


def append(path: Path, record: Record) -> None:
    """One line, in one write() under flock: safe with any number of processes appending at once."""
    line = (record.model_dump_json() + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(line)
        while view:   # a regular file takes it whole; a short write (disk full) leaves a line the reader refuses
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)   # releases the lock


@dataclass(frozen=True)
class Loaded:
    """What record files held: `records` merged (one per identity, first seen kept, in order), `lines` read,
    `warnings` one per line that is not a record ("run.jsonl:12: not JSON: ...")."""
    records: tuple[Record, ...]
    lines: int
    warnings: tuple[str, ...]


def parse_line(raw: bytes) -> Record:
    """A record from one line, or ValueError with a one-line reason."""
    if len(raw) > MAX_LINE_BYTES:
        raise ValueError(f"a line of {len(raw)} bytes, more than {MAX_LINE_BYTES}")
    data = json_value(raw)
    if isinstance(data, dict) and data.get("version") != SCHEMA_VERSION:
        raise ValueError(f"schema version {one_line(repr(data.get('version')), 40)}; this autotune-cache reads "
                         f"version {SCHEMA_VERSION}")
    try:
        return Record.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise ValueError(one_line(f"{where}: {first['msg']}")) from None


def read(paths) -> Loaded:
    """Every record of `paths`, merged (merge()). RecordError only for a path that cannot be read at all."""
    records, warnings, lines = [], [], 0
    for path in map(Path, paths):
        if path.exists() and not path.is_file():   # a FIFO would block the open
            raise RecordError(f"record file {path} is not a regular file")
        try:
            f = open(path, "rb")
        except OSError as e:
            raise RecordError(f"cannot read the record file {path}: {e.strerror or e}") from None
        with f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                lines += 1
                try:
                    records.append(parse_line(raw.rstrip(b"\n")))
                except ValueError as e:
                    warnings.append(f"{path}:{number}: {e}")
    return Loaded(records=tuple(merge(records)), lines=lines, warnings=tuple(warnings))


def merge(records) -> list[Record]:
    """One record per identity (Record.identity), the first seen kept unless a later one is replayable and it is
    not; a miss anywhere marks the merged record a miss (a server tuned it)."""
    merged: dict[tuple, Record] = {}
    for rec in records:
        ident = rec.identity()
        seen = merged.get(ident)
        if seen is None:
            merged[ident] = rec
            continue
        if seen.problems() and not rec.problems():
            seen, rec = rec, seen
        if rec.outcome == "miss" and seen.outcome != "miss":
            seen = seen.model_copy(update={"outcome": "miss"})
        merged[ident] = seen
    return list(merged.values())
