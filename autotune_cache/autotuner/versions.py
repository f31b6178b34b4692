"""Which Tritons this tool runs on: the floor it refuses below, the releases CI exercises, and the one line a user
gets for each case; and what differs between the supported ones that other rooms act on: one named function per
change, each naming the Triton that made it and the line of Triton that decides it. Rooms ask these functions (or
what disk.py builds on them), never Triton's version number. FACTS.md §1 and §7 hold the checks behind each.

Read without importing `triton.runtime` (that import is what fails on an unsupported Triton: 3.4 has no
`autotuner.get_cache_manager`), so every entry point can ask first: install() (refuses non-strict by staying out
of the way), a build (before it creates anything), verify (a FAIL line).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import metadata

from packaging.version import InvalidVersion, Version

from ..errors import UnsupportedTritonError

FLOOR = (3, 6)
# Below the floor, what breaks (measured on the fake GPU, tests/test_triton_versions.py on 3.5.1):
BELOW_FLOOR: dict[tuple[int, ...], str] = {
    (3, 5): "its AsyncCompileMode takes no ignore_errors, so the build's threaded precompile fails every unit",
    (3, 4): "its autotuner has no get_cache_manager or triton_key, which every disk lookup and disk key uses",
}
# The minor releases CI runs (.ci/run: the suite on 3.6, the seam's tests on 3.8 and 3.9, a smoke build and serve
# on 3.7, the refusal on 3.5). A newer one is used with a warning: most Triton releases keep the autotuner's
# disk cache as it was, and a pin would hold users back from every fix.
TESTED = ((3, 6), (3, 7), (3, 8), (3, 9))


@dataclass(frozen=True)
class Support:
    """What this tool makes of the Triton installed here. Example: Support("3.10.0", None, "Triton 3.10.0 is
    newer than ... ")."""
    version: str | None   # None: no Triton installed
    refusal: str | None   # one line: this Triton cannot be used (install() stays out of the way, build/verify fail)
    warning: str | None   # one line: usable, but newer than any Triton CI has run

    @property
    def ok(self) -> bool:
        return self.refusal is None


def tested_range() -> str:
    return f"{_dotted(TESTED[0])} to {_dotted(TESTED[-1])}"


def _dotted(minor: tuple[int, int]) -> str:
    return f"{minor[0]}.{minor[1]}"


def installed() -> str | None:
    """The version of the Triton that `import triton` would load, without importing it where the distribution's
    metadata says (a dir put first on PYTHONPATH carries its own); else triton.__version__."""
    try:
        return metadata.version("triton")
    except metadata.PackageNotFoundError:
        pass
    try:
        import triton
    except ImportError:
        return None
    return str(getattr(triton, "__version__", "")) or None


def support_of(version: str | None) -> Support:
    """Pure: the verdict for a Triton version string ("3.6.0", "3.10.0.dev20270101+git1", None)."""
    if version is None:
        return Support(None, f"Triton is not installed (pip install 'triton>={_dotted(FLOOR)}')", None)
    try:
        minor = Version(version).release[:2]
    except InvalidVersion:
        return Support(version, None, f"Triton {version}: not a version this tool can compare; tested: "
                                      f"{tested_range()}")
    if minor < FLOOR:
        why = BELOW_FLOOR.get(minor, "older than any Triton this tool was made for")
        return Support(version, f"Triton {version} is not supported ({why}): this tool needs Triton "
                                f">= {_dotted(FLOOR)} (tested: {tested_range()})", None)
    if minor > TESTED[-1]:
        return Support(version, None, f"Triton {version} is newer than the Tritons this tool is tested with "
                                      f"({tested_range()}): its caches may not hit; report what fails")
    return Support(version, None, None)


@functools.lru_cache(maxsize=1)
def support() -> Support:
    """The verdict for the Triton installed here (read once per process)."""
    return support_of(installed())


def require() -> Support:
    """support(), raising UnsupportedTritonError (one line) where this Triton cannot be used: before a build
    creates anything, or ensure reads a fingerprint."""
    supported = support()
    if supported.refusal is not None:
        raise UnsupportedTritonError(supported.refusal)
    return supported


# -- what differs between the supported Tritons ----------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def triton_version() -> tuple[int, ...]:
    """(major, minor) of the Triton imported here (`triton.__version__`: where behaviour is asked, Triton is imported
    anyway), e.g. (3, 8) for "3.8.0" or "3.8.0+git1234abcd"."""
    import triton
    try:
        return Version(triton.__version__).release[:2]
    except InvalidVersion:   # a version nobody foresaw: the newest behaviour this tool knows
        return (99, 0)


def prunes_to_one_skip_disk() -> bool:
    """Triton 3.8+: a key whose configs prune to ONE is kept in memory with that config, without a disk lookup, a
    benchmark or an autotune file (and without `knobs.autotuning.listener`); Triton 3.6 and 3.7 look it up (a miss
    benchmarks the one config and writes its file) like any other key.

    Decided in `Autotuner.run`, triton/runtime/autotuner.py (3.8.0 line 232, 3.9.0 line 247):
        if len(pruned_configs) == 1:
            self.cache[key] = pruned_configs[0]
            used_cached_result = True
        else:   ... self.check_disk_cache(key, pruned_configs, benchmark) ...
    """
    return triton_version() >= (3, 8)


def group_needs_every_member() -> bool:
    """Triton 3.8+: `FileCacheManager.get_group` returns None (the kernel is compiled again) when any file its group
    lists is missing; Triton 3.6 and 3.7 return the members that exist.

    Decided in `FileCacheManager.get_group`, triton/runtime/cache.py (3.8.0 and 3.9.0 line 90):
        if not os.path.exists(p):
            return None
    against 3.6.0 line 86: `if os.path.exists(p): result[c] = p`.
    """
    return triton_version() >= (3, 8)
