"""How long does the loader's integrity check take on a cache of N files?

Synthesizes a Triton cache dir laid out like a real unpruned build (compiled-kernel dirs of 8 files each:
.source .ttir .ttgir .llir .ptx .cubin .json __grp__; autotune JSON files in their own dirs; the launcher and
cuda_utils .so), writes its manifest with the package's own `cache_files`, then times what `install()` runs before
it points Triton at the dir (loader._check_integrity: manifest load + every file stat'ed and hashed + modes),
warm (files in the page cache) and cold (each file evicted from the page cache with posix_fadvise first).

    python scripts/bench_loader_verify.py --files 2000 --json out/bench_loader_verify.json

Sizes (random bytes; uniform within each range, KB): cubin 10-200, ptx 1.0-2.0x the cubin, llir 0.8-1.2x, ttgir
0.2-0.4x, ttir 0.15-0.25x, source 2-8, metadata json 1-3, group 0.5-1, autotune json 1-6, .so 22 and 32. The H200
build of BENCHMARKS.md (qwen3.5-9b, TP 1+2) held 1365 files in 60.6 MB, 44 KB a file; these average ~50 KB.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autotune_cache import __version__
from autotune_cache.cache import manifest as manifest_mod
from autotune_cache.cache.manifest import Manifest

KB = 1024
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def _hash_dir(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(52))   # base32 sha256, as Triton names them


def synthesize(root: Path, n_files: int, seed: int) -> dict:
    """A cache of about n_files files (see the module doc); returns counts and bytes per kind."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    kinds: dict[str, list[int]] = {}

    def write(path: Path, size: int, kind: str) -> None:
        with open(path, "wb") as f:
            f.write(rng.randbytes(size))
            os.fsync(f.fileno())   # clean pages: posix_fadvise(DONTNEED) can then evict them
        kinds.setdefault(kind, []).append(size)

    so_dir = root / _hash_dir(rng)
    so_dir.mkdir()
    write(so_dir / "cuda_utils.cpython-312-x86_64-linux-gnu.so", 32 * KB, "so")
    write(so_dir / "__triton_launcher.cpython-312-x86_64-linux-gnu.so", 22 * KB, "so")
    n_dirs = (n_files - 2) * 24 // 25 // 8           # ~4% of the files are autotune JSON, as in a real build
    n_json = n_files - 2 - 8 * n_dirs
    for i in range(n_dirs):
        d = root / _hash_dir(rng)
        d.mkdir()
        name = f"kernel_{i % 6}"
        cubin = rng.randint(10 * KB, 200 * KB)
        write(d / f"{name}.cubin", cubin, "cubin")
        write(d / f"{name}.ptx", int(cubin * rng.uniform(1.0, 2.0)), "ptx")
        write(d / f"{name}.llir", int(cubin * rng.uniform(0.8, 1.2)), "llir")
        write(d / f"{name}.ttgir", int(cubin * rng.uniform(0.2, 0.4)), "ttgir")
        write(d / f"{name}.ttir", int(cubin * rng.uniform(0.15, 0.25)), "ttir")
        write(d / f"{name}.source", rng.randint(2 * KB, 8 * KB), "source")
        write(d / f"{name}.json", rng.randint(1 * KB, 3 * KB), "json")
        group = {"child_paths": {f"{name}.{ext}": str(d / f"{name}.{ext}")
                                 for ext in ("cubin", "ptx", "llir", "ttgir", "ttir", "source", "json")}}
        text = json.dumps(group).encode()
        (d / f"__grp__{name}.json").write_bytes(text)
        kinds.setdefault("group", []).append(len(text))
    for i in range(n_json):
        d = root / _hash_dir(rng)
        d.mkdir()
        write(d / f"kernel_{i % 6}.autotune.json", rng.randint(1 * KB, 6 * KB), "autotune")
    m = Manifest(tool_version=__version__, files=manifest_mod.cache_files(root))
    manifest_mod.save(m, root)
    return {k: {"files": len(v), "bytes": sum(v)} for k, v in kinds.items()}


def evict(root: Path) -> None:
    """Drop this cache's files (only them) from the page cache."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def loader_check(root: Path):
    """What install() runs before pointing Triton at the dir, without the rest of install()."""
    from autotune_cache.serve.loader import LoaderReport, _check_integrity
    report = LoaderReport(root, (), strict=True)
    start = time.perf_counter()
    _check_integrity(report, require_manifest=True, allow_shared_writable=False, public_key=None)
    return time.perf_counter() - start, report


def walk_only(root: Path) -> float:
    from autotune_cache.cache.integrity import _walk
    start = time.perf_counter()
    for _ in _walk(root, [], []):
        pass
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000, help="files in the synthesized cache (default 2000)")
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per case (default 7)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", help="where to synthesize (default: a temp dir, removed after)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold (page cache evicted) runs")
    ap.add_argument("--json", help="write the results there")
    args = ap.parse_args(argv)

    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-loader-verify-"))
    root = base / "cache"
    try:
        t0 = time.perf_counter()
        kinds = synthesize(root, args.files, args.seed)
        synth_s = time.perf_counter() - t0
        m = manifest_mod.load(root)
        total = sum(f.size for f in m.files.values())
        cases = {"warm": [], "cold": [], "walk only (stat, no hashing), warm": []}
        for _ in range(args.repeat):
            seconds, report = loader_check(root)
            assert report.verified and report.files_checked == len(m.files), report.refused[:3]
            cases["warm"].append(seconds)
            cases["walk only (stat, no hashing), warm"].append(walk_only(root))
            if not args.no_cold:
                evict(root)
                cases["cold"].append(loader_check(root)[0])
        cases = {k: v for k, v in cases.items() if v}
        try:
            import triton
            triton_version = triton.__version__
        except ImportError:
            triton_version = None
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                   platform.processor())
        result = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu, "cores": os.cpu_count(), "gpu": None, "python": platform.python_version(),
                        "triton": triton_version, "openssl": ssl.OPENSSL_VERSION},
            "cache": {"files": len(m.files), "bytes": total, "kinds": kinds, "synthesize_s": round(synth_s, 2)},
            "repeat": args.repeat,
            "seconds": {k: {"min": min(v), "median": statistics.median(v), "max": max(v)} for k, v in cases.items()},
        }
        print(f"loader integrity check: {len(m.files)} files, {total / 1e6:.1f} MB "
              f"({kinds['cubin']['bytes'] / 1e6:.1f} MB in {kinds['cubin']['files']} cubins); "
              f"{result['machine']['cpu']}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"Triton {triton_version}")
        print(f"{'case':40} {'min s':>8} {'median s':>9} {'max s':>8} {'MB/s (median)':>14}")
        for k, v in result["seconds"].items():
            rate = "" if k.startswith("walk") else f"{total / 1e6 / v['median']:.0f}"
            print(f"{k:40} {v['min']:8.3f} {v['median']:9.3f} {v['max']:8.3f} {rate:>14}")
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
            print(f"wrote {args.json}")
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
