"""The operations: what each command does, callable from Python without the CLI (pip's `operations/`). A command
module parses its arguments, calls one operation and renders the typed result it returns; the init container, the
vLLM plugin, a fleet job or a Kubernetes operator call the same functions.

- `build_into(spec, dir)` -> `Built`: a spec's plan built into a cache dir (`autotune-cache build`, `build()`).
- `build_from_records(paths, spec)` -> `RecordsBuilt`: the recorded lookups built (`build --from-record`).
- `ensure(spec, dir)` -> `Ensured`: what the dir lacks built, the rest checked as the loader will
  (`autotune-cache ensure`; `autotune_cache.ensure`).

Each takes its cache dir once at this boundary (cache/location.py: `~` expanded, absolute) and, when it fails,
takes away exactly what it created (cache/files.Created): never a dir or file that was there before it.
"""
from __future__ import annotations

from .build import Built, RecordsBuilt, build_from_records, build_into
from .ensure import Ensured, ensure

__all__ = ["Built", "Ensured", "RecordsBuilt", "build_from_records", "build_into", "ensure"]
