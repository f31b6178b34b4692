"""What differs between the Triton versions this tool runs on (3.6 to 3.9) and other rooms must act on: one named
function per change, each naming the Triton that made it and the line of Triton that decides it. Rooms ask these
functions (or what disk.py builds on them), never Triton's version number.

Read from the installed Triton's version (`triton.__version__`, the first on sys.path: the CI matrix puts 3.8 and
3.9 before the venv's 3.6). FACTS.md §1 and §7 hold the checks behind each.
"""
from __future__ import annotations

import functools
import re


@functools.lru_cache(maxsize=1)
def triton_version() -> tuple[int, int]:
    """(major, minor) of the installed Triton, e.g. (3, 8) for "3.8.0" or "3.8.0+git1234abcd"."""
    import triton
    found = re.match(r"(\d+)\.(\d+)", triton.__version__)
    if found is None:   # a version nobody foresaw: the newest behaviour this tool knows
        return (99, 0)
    return int(found.group(1)), int(found.group(2))


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
