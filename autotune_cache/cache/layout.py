"""The one module that knows Triton's disk-cache layout (Triton 3.6-3.9): file names, the autotune JSON, group files.

<TRITON_CACHE_DIR>/<base32 sha256 of the key parts>/ holds either one `<kernel __name__[:150]>.autotune.json`
({"key": [...], "configs_timings": [[config.__dict__, [p50, p20, p80]], ...]}; the winner is the config with the
smallest timings), or one compiled variant of a kernel: `__grp__<kernel>.json` listing its .source/.ttir/.ttgir/
.llir/.ptx/.cubin/.json by ABSOLUTE path, or Triton's launcher/utils `.so`. Triton writes each file through
`<hash dir>/tmp.pid_<pid>_<uuid>/` and then renames it into place. Plain JSON and names: no Triton import.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import bounded_json

AUTOTUNE_SUFFIX = ".autotune.json"
GROUP_PREFIX = "__grp__"
# A dir left with this prefix means a Triton writer died mid-write (its own temp dir, renamed away on success).
TMP_PREFIX = "tmp.pid_"


def is_autotune_file(name: str) -> bool:
    return name.endswith(AUTOTUNE_SUFFIX)


def autotune_kernel(name: str) -> str:
    """The kernel name in an autotune file's name: "l2norm_fwd_kernel.autotune.json" -> "l2norm_fwd_kernel"."""
    return name.removesuffix(AUTOTUNE_SUFFIX)


def is_group_file(name: str) -> bool:
    """`name`: a file name or a relative path."""
    return name.rsplit("/", 1)[-1].startswith(GROUP_PREFIX)


def group_kernel(name: str) -> str:
    """The kernel name in a group file's name: "__grp__chunk_fwd_kernel_o.json" -> "chunk_fwd_kernel_o"."""
    return name.removeprefix(GROUP_PREFIX).removesuffix(".json")


def members_first(rels) -> list[str]:
    """Relative paths in the order to move them into a cache: a group file after every other file, as Triton writes
    them, so a reader never finds a group whose members are not there yet."""
    return sorted(rels, key=lambda rel: (is_group_file(rel), rel))


def is_triton_tmp(name: str) -> bool:
    """`name`: one component of a path (Triton's temp dirs sit inside a hash dir)."""
    return name.startswith(TMP_PREFIX)


@dataclass(frozen=True)
class AutotuneFile:
    """A parsed <kernel>.autotune.json."""
    key: tuple
    timings: tuple[tuple[dict, tuple[float, ...]], ...]   # (config.__dict__, (p50, p20, p80)) per config

    @property
    def winner(self) -> dict:
        return min(self.timings, key=lambda ct: ct[1])[0]

    @property
    def best(self) -> float:
        return min(t for _, t in self.timings)[0]

    @property
    def margin(self) -> float | None:
        """Runner-up time over best time, minus one (0.05 = the runner-up is 5% slower); None with one config."""
        ranked = sorted(t[0] for _, t in self.timings)
        return ranked[1] / ranked[0] - 1 if len(ranked) > 1 and ranked[0] > 0 else None


def read_autotune(path: Path) -> AutotuneFile:
    """Parse an autotune JSON; raises ValueError (or OSError) on a corrupt or unreadable file."""
    return parse_autotune(Path(path).read_bytes())


def parse_autotune(data: bytes | str) -> AutotuneFile:
    """read_autotune on the file's bytes (a caller that also hashes them reads the file once). Plain JSON: the
    build parent uses it and never imports Triton."""
    raw = bounded_json.json_value(data)
    if not isinstance(raw, dict) or "key" not in raw or not isinstance(raw.get("configs_timings"), list):
        raise ValueError("not a Triton autotune file (needs 'key' and 'configs_timings')")
    timings = []
    for item in raw["configs_timings"]:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], dict)):
            raise ValueError("malformed configs_timings entry")
        t = item[1] if isinstance(item[1], list) else [item[1]]
        timings.append((item[0], tuple(float(x) for x in t)))
    if not timings:
        raise ValueError("no configs_timings")
    return AutotuneFile(key=tuple(raw["key"]), timings=tuple(timings))


def read_group(path: Path) -> dict[str, str]:
    """child_paths of a `__grp__<name>.json`: file name -> ABSOLUTE path where Triton wrote it. Raises
    ValueError (or OSError) when unreadable: Triton itself would fail the kernel call on such a file."""
    return parse_group(Path(path).read_bytes())


def parse_group(data: bytes | str) -> dict[str, str]:
    """read_group on the file's bytes (a checker that also hashes them reads the file once)."""
    raw = bounded_json.json_value(data)
    paths = raw.get("child_paths") if isinstance(raw, dict) else None
    if not isinstance(paths, dict) or not all(isinstance(v, str) for v in paths.values()):
        raise ValueError("not a Triton group file (needs 'child_paths': {name: path})")
    return paths


def relocated_group(paths: dict[str, str], new_dir: Path) -> str:
    """The text of a group file whose members live in `new_dir`. Triton drops members whose absolute path does
    not exist (then recompiles): after a move, only this rewrite makes the compiled files load again. Only
    each path's file name is kept, so a crafted group file cannot point outside `new_dir`."""
    return json.dumps({"child_paths": {name: str(Path(new_dir) / Path(p).name) for name, p in paths.items()}})
