"""Errors a user can act on. The CLI prints their message on one line and exits 2.

Also how a message shows what it quotes: `shown` (a refused value, cut short) and `printable` (any text on its
way to a terminal: names read from disk, a bundle or a config.json must reach it as text, never as escapes).
"""
from __future__ import annotations

import reprlib
from collections.abc import Iterable
from typing import Any

# Characters a terminal acts on instead of showing: the C0 controls (ESC starts colour, cursor, title and
# clipboard sequences; CR returns to overwrite the line; BEL rings), DEL, and the C1 controls (0x9b is a one-byte
# CSI to some terminals); also the bidirectional overrides and isolates, which reorder what the line shows.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROL.update({c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))})
_CONTROL_BUT_NEWLINE = {c: e for c, e in _CONTROL.items() if c != 0x0A}


def printable(text: object, *, lines: bool = False) -> str:
    """`text` with every control character written out as `\\xNN` (`\\u202e` for a bidi override), so that
    echoing a name cannot colour, move, retitle or rewrite the user's terminal. One line unless `lines` (a
    console's own multi-line output), which keeps newlines."""
    return str(text).translate(_CONTROL_BUT_NEWLINE if lines else _CONTROL)


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60


def shown(value: object) -> str:
    """repr() of a refused value, cut short: a message quotes what it refuses, not a 4 MiB list from a
    config.json, nor an int past Python's 4,300-digit limit (whose repr() itself raises, also inside a list)."""
    try:
        return _SHORT.repr(value)
    except ValueError:
        if isinstance(value, int):
            return f"an integer of {value.bit_length()} bits"
        return f"a {type(value).__name__} holding an integer too long to show"


class AutotuneCacheError(Exception):
    """Base of every error whose message is meant for the user."""


class UnknownModelError(AutotuneCacheError):
    pass


class ConfigError(AutotuneCacheError):
    """A config.json (or snapshot dir) that cannot be read as a GDN model."""


class SpecError(AutotuneCacheError):
    """A build request that cannot be planned: bad TP degree, token count, target, dtype."""


class CacheDirError(AutotuneCacheError):
    """A cache directory that cannot be used: a file, unwritable, locked too long."""


class NoGPUError(AutotuneCacheError):
    pass


class UnsupportedTritonError(AutotuneCacheError):
    """The Triton installed here is one this tool cannot work with (autotuner/versions.py says which and why)."""


class BuildFailedError(AutotuneCacheError):
    """Some units stayed failed; the manifest holds the rest."""

    # `manifest`: the build's cache.manifest.Manifest. Typed Any: every room reads errors.py, which imports none of them
    # (an import of the manifest here, even for the type checker alone, is a circle of rooms)
    def __init__(self, message: str, manifest: Any = None) -> None:
        super().__init__(message)
        self.manifest = manifest


class IntegrityError(CacheDirError):
    """A cache dir (or bundle) that must not be loaded: files differ from its manifest, are missing or foreign, or
    its signature does not verify. `files` names them (relative paths, or absolute for a parent dir)."""

    def __init__(self, message: str, files: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.files = list(files)


class BundleError(CacheDirError):
    """A bundle that cannot be imported: unsafe, damaged, or not ours."""


class BundleSignatureError(BundleError):
    """A bundle imported with a public key whose manifest.sig is missing or not that key's (nothing written)."""


class CacheMissError(AutotuneCacheError):
    """Strict serving: a kernel would have been benchmarked in the server."""


class IncompatibleCacheError(AutotuneCacheError):
    """Strict serving: the cache was built in an environment whose disk keys differ from this one."""


class SharedWritableError(IntegrityError):
    """A cache dir, an entry in it or a parent that users other than the owner can write."""


class RegistryError(AutotuneCacheError):
    """A cache registry (registry/) that cannot be read or written, or holds nothing for the request."""


class RegistryUnreachableError(RegistryError):
    """The registry's storage did not answer (no network, no such bucket): a server may fall back to tuning."""


class NoMatchingBundleError(RegistryError):
    """The registry holds no bundle for this model, TP degrees, kernel sources and machine."""


class RecordError(AutotuneCacheError):
    """A record file (autotune-cache record, install(record=...)) that cannot be read or written at all."""


class UnreplayableError(AutotuneCacheError):
    """A recorded autotune lookup that cannot be made again here: its kernel's module does not import, the kernel
    is not found in it, its source changed since the record, or an argument was not described."""


class UnsupportedEngineError(AutotuneCacheError):
    """An engine version whose kernels a target does not describe (an older layout whose keys were never checked)."""

class SettingsError(AutotuneCacheError):
    """An AUTOTUNE_CACHE_* variable whose value cannot be read (docs/settings.md)."""


def exception_line(e: BaseException, limit: int = 200) -> str:
    """'RecursionError: maximum recursion depth exceeded': an unexpected exception as a refusal's reason."""
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
