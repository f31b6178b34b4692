"""Record the autotune lookups of any Triton kernel in a live process, and make them again out of process.

- `schema`: the record (one JSON line per distinct kernel and key), versioned pydantic models; `store`: appending
  from many processes, reading and merging record files.
- `recorder`: the hook that writes them (`start`, `install(record=...)`, AUTOTUNE_CACHE_RECORD, `autotune-cache
  record -- CMD`), `describe`: a live call as a record, `boot`: the wrapper's start-up hook.
- `replay`: inside a build child, the recorded calls made again (builder/replay_unit.py plans them).
"""
from __future__ import annotations

from .recorder import MISSES_ENV, RECORD_ENV, Recorder, start, start_from_env, stop
from .schema import SCHEMA_VERSION, Record
from .store import Loaded, read

__all__ = ["MISSES_ENV", "RECORD_ENV", "Recorder", "start", "start_from_env", "stop", "SCHEMA_VERSION", "Record",
           "Loaded", "read"]
