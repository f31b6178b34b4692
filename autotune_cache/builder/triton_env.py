"""The cache-invalidating env vars a build runs with (FACTS.md §1): Triton puts the set ones into every autotune disk
key and every compiled kernel's key, so the build child and its compile workers must run with the values the
server will use, or every lookup of the server misses.

By default the child has this environment's values (the shell's). A build request may name some instead
(`--triton-env NAME=VALUE`, repeatable; BuildSpec.triton_env): NAME=VALUE sets NAME in the child, NAME= (an empty
value) builds with NAME unset, as Triton reads an empty value. The other variables keep this environment's values.
Only names the installed Triton counts as cache-invalidating are accepted (its list, asked of it: it differs per
version); any other enters no key, so setting it for the build could not make the server hit.

    parse(["TRITON_DEFAULT_FP_FUSION=1"]) -> {"TRITON_DEFAULT_FP_FUSION": "1"}       (the CLI's items)
    check({"TRITON_DEFAULT_FP_FUSION": "1"}) -> {"TRITON_DEFAULT_FP_FUSION": "true"} (Triton's reading; SpecError)
    apply(env)                                                                        (in the child, first)
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, MutableMapping

from ..errors import SpecError, printable, shown

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_VALUE = 4096   # bytes of one value: Triton's are short words ("1", "ieee"); a bound on what a spec carries
FLAG = "--triton-env"


def parse(items: Iterable[str]) -> dict[str, str]:
    """The CLI's NAME=VALUE items, in order; SpecError for an item without "=" (NAME= is the way to unset)."""
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SpecError(f"{FLAG} {printable(shown(item))}: give NAME=VALUE (NAME= builds with NAME unset), e.g. "
                            f"{FLAG} TRITON_DEFAULT_FP_FUSION=1")
        pairs(list(env.items()) + [(name, value)])   # the same checks as a BuildSpec's
        env[name] = value
    return env


def pairs(env: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """A request's env as BuildSpec keeps it: (name, value) pairs sorted by name; SpecError for a name that is not
    one, a value past MAX_VALUE or holding NUL, or one name given two values."""
    items = list(env.items()) if isinstance(env, Mapping) else list(env)
    seen: dict[str, str] = {}
    for item in items:
        if not (isinstance(item, tuple | list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise SpecError(f"{FLAG}: each item is a name and a value, got {printable(shown(item))}")
        name, value = item
        if not NAME.match(name):
            raise SpecError(f"{FLAG} {printable(shown(name))}: not an env var name (letters, digits, '_')")
        if "\0" in value or len(value.encode(errors="surrogateescape")) > MAX_VALUE:
            raise SpecError(f"{FLAG} {name}: a value of at most {MAX_VALUE} bytes without NUL")
        if seen.get(name, value) != value:
            raise SpecError(f"{FLAG} {name} given twice, as {printable(shown(seen[name]))} and "
                            f"{printable(shown(value))}")
        seen[name] = value
    return tuple(sorted(seen.items()))


def applied(environ: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `environ` as the child has it (apply())."""
    out = dict(environ)
    apply(env.items(), out)
    return out


def check(env: Mapping[str, str]) -> dict[str, str] | None:
    """Refuse (SpecError, before anything is created) a name the installed Triton does not count cache-invalidating.
    Returns the cache-invalidating vars a child started with `env` will key its entries with, as Triton reads them
    ({"TRITON_DEFAULT_FP_FUSION": "true"} for =1): what a server must run with to hit. None for an empty `env`
    (nothing to ask: the child keeps this environment's values)."""
    if not env:
        return None
    from ..autotuner.keys import invalidating_env_vars_in
    # Each named var set (those to unset, to "1"), so that Triton lists every name it counts.
    asked = applied(os.environ, {name: value or "1" for name, value in env.items()})
    try:
        version, found = invalidating_env_vars_in(asked)
    except RuntimeError as e:
        raise SpecError(f"{FLAG}: cannot ask Triton which env vars are cache-invalidating ({e})") from None
    for name in sorted(env):
        if name not in found:
            raise SpecError(f"{FLAG} {name}: not a cache-invalidating env var of Triton {version} (its value enters "
                            "no disk key, so it cannot make a server miss; to build with it anyway, export it: the "
                            "build child inherits the shell's env)")
    unset = {name for name, value in env.items() if not value}
    return {name: value for name, value in found.items() if name not in unset}


def apply(env: Iterable[tuple[str, str]], environ: MutableMapping[str, str] = os.environ) -> None:
    """Each named variable set to its value, or removed where the value is empty. In the build child: before Triton
    is imported or a compile worker started (they inherit it), the request's values in place of the shell's."""
    for name, value in env:
        if value:
            environ[name] = value
        else:
            environ.pop(name, None)
