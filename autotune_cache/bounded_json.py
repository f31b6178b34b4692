"""JSON from a file that may hold anything (a cache's manifest, a bundle's members, a user's config.json), parsed
with bounds: every way it can be bad is one ValueError with a one-line reason, never a RecursionError, a
UnicodeDecodeError or a traceback. Callers turn it into their own typed error (CacheDirError, ConfigError)."""
from __future__ import annotations

import json

# Deeper than any file we read legitimately is (a manifest: 5 levels); json.loads itself stops near 1,000.
MAX_DEPTH = 64


def one_line(text, limit: int = 300) -> str:
    """A text for a one-line message: whitespace runs as one space, anything unprintable escaped, cut."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in " ".join(str(text).split()))
    return text if len(text) <= limit else text[:limit] + "..."


def json_value(data: bytes | str, max_depth: int = MAX_DEPTH):
    """The JSON value of `data`; ValueError: 'not UTF-8: byte 12', 'nested deeper than 64 levels', or the JSON
    error (an integer of more digits than Python converts included)."""
    try:
        value = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8: byte {e.start}") from None
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    except ValueError as e:   # JSONDecodeError, and an integer past Python's 4,300-digit limit
        raise ValueError(one_line(e)) from None
    if _depth_exceeds(value, max_depth):
        raise ValueError(f"nested deeper than {max_depth} levels")
    return value


def _depth_exceeds(value, limit: int) -> bool:
    """Whether JSON `value` nests more than `limit` lists/objects deep (iterative: never recursion itself)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > limit:
                return True
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return False
