"""What autotune_cache.install() costs a server's start, in N fresh processes per case, page cache warm and cold.

Each process: `import torch`, `import triton`, `import autotune_cache` and `install(CACHE_DIR)` (the private copy
on: the default), each timed alone; then, with --first-call, the target's kernel modules (timed apart: a server
imports them whatever the cache) and the first call, with the garbage collections inside it beside its time.
install() + first call is the sum to watch: install() now leaves triton_key() and the ptxas run to the first
autotune lookup, where Triton computes them anyway, so the sum should not grow while install() shrinks.

Cases: `deferred` (the cache as given: a manifest that records triton_files) and, with --full-check-too, `full
check at install` (a copy whose manifest lacks triton_files, as every manifest written before it: install()
computes triton_key and runs ptxas itself, what every install() did before). The page cache: `warm` runs after a
discarded process that read everything; `cold` (--cold) runs after posix_fadvise(DONTNEED) on the files of triton,
autotune_cache and the cache dir (only these files: nothing machine-wide such as drop_caches, which would
disturb whatever else runs there). Pages another process holds mapped stay resident: the JSON says how much of
libtriton and of the cache was still resident when each cold process started.

    python scripts/bench_install.py --cache-dir DIR [--runs 5] [--cold] [--full-check-too] \\
        [--first-call --model qwen3.5-9b --tp 1 --tokens 4096] [--target fla] [--emulate] [--json-out F]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# Runs in each fresh process. Uses only what older trees have too (install, LoaderReport.as_dict, targets, models),
# so the same script can time another checkout: PYTHONPATH=<that tree> python scripts/bench_install.py ...
CHILD = r'''
import gc, importlib, json, os, sys, time
a = json.loads(sys.argv[1])
out = {}
log = {"full": 0, "s": 0.0, "t": None}
def on_gc(phase, info):
    if phase == "start":
        log["t"] = time.perf_counter()
    elif log["t"] is not None:
        log["s"] += time.perf_counter() - log["t"]
        log["full"] += info["generation"] == 2
        log["t"] = None
gc.callbacks.append(on_gc)
def timed(name, fn):
    t = time.perf_counter()
    value = fn()
    out[name] = round(time.perf_counter() - t, 4)
    return value
def costly():
    try:
        from triton.runtime.cache import triton_key
        from triton.backends.nvidia.compiler import get_ptxas_version
        return {"triton_key_runs": triton_key.cache_info().misses, "ptxas_runs": get_ptxas_version.cache_info().misses}
    except Exception as e:
        return {"error": repr(e)}
if a["emulate"]:
    from autotune_cache.builder import emulation
    timed("emulation_s", emulation.fake_gpu)   # imports torch and triton itself: their times below are then ~0
torch = timed("import_torch_s", lambda: importlib.import_module("torch"))
timed("import_triton_s", lambda: importlib.import_module("triton"))
autotune_cache = timed("import_autotune_cache_s", lambda: importlib.import_module("autotune_cache"))
from autotune_cache.targets import get
target = get(a["target"])
extra = target.module_prefixes if a["target"] != "fla" else ()
os.environ.pop("TRITON_CACHE_AUTOTUNING", None)
gc_before = dict(log)
report = timed("install_s", lambda: autotune_cache.install(a["cache_dir"], modules=extra))
out["install_gc"] = {"full": log["full"] - gc_before["full"], "s": round(log["s"] - gc_before["s"], 4)}
out["at_install"] = costly()
r = report.as_dict()
out["report"] = {k: r.get(k) for k in ("verified", "refused", "files_checked", "verify_seconds", "copy_dir",
                                       "copy_seconds", "mismatches", "keys_deferred")}
if a["first_call"]:
    for m in target.imports:
        timed("kernel_import_" + m, lambda: importlib.import_module(m))
    out["kernel_import_s"] = round(sum(v for k, v in out.items() if k.startswith("kernel_import_")), 4)
    from autotune_cache import shapes
    shape = shapes.resolve(a["model"], None).per_rank(a["tp"])
    dtypes = target.default_dtypes(shape)
    device = "cpu" if a["emulate"] else "cuda"
    if device == "cuda":
        torch.zeros(1, device=device)   # CUDA's start: before the clock, as a server's model load does it
        torch.cuda.synchronize()
    log["full"], log["s"] = 0, 0.0
    def call():
        target.run(shape, dtypes, a["tokens"], device)
        if device == "cuda":
            torch.cuda.synchronize()
    timed("first_call_s", call)
    out["first_call_gc"] = {"full": log["full"], "s": round(log["s"], 4)}
    out["install_plus_first_call_s"] = round(out["install_s"] + out["first_call_s"], 4)
    out["after_first_call"] = costly()
    out["lookups"] = report.totals
print(json.dumps(out))
'''


# -- the page cache ----------------------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident(paths: list[Path]) -> float | None:
    """The fraction of the pages of `paths` in the page cache now (mincore), None if it cannot be read here."""
    total = cached = 0
    for path in paths:
        try:
            size = path.stat().st_size
            if size == 0:
                continue
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr is None or addr == ctypes.c_void_p(-1).value:
                return None
            try:
                pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
                vec = (ctypes.c_ubyte * pages)()
                if _libc.mincore(addr, size, vec) != 0:
                    return None
                total, cached = total + pages, cached + sum(v & 1 for v in bytes(vec))
            finally:
                _libc.munmap(addr, size)
        finally:
            os.close(fd)
    return round(cached / total, 3) if total else None


def evict(paths: list[Path]) -> None:
    """Drop these files' clean pages from the page cache (posix_fadvise DONTNEED: this user's files only, nothing
    else on the machine)."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def files_under(*roots: Path) -> list[Path]:
    return [Path(d, f) for root in roots if root.is_dir() for d, _, names in os.walk(root) for f in names]


def package_dir(name: str) -> Path | None:
    """Where a package lives, without importing it here (this process must not hold its pages mapped)."""
    import importlib.util
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec and spec.origin else None


# -- the runs ----------------------------------------------------------------------------------------------------
def without_triton_files(cache: Path, dest: Path) -> Path:
    """A copy of `cache` whose manifest lacks fingerprint.triton_files, as every manifest written before it: install()
    then compares triton_key and ptxas itself. The fingerprint is no part of trust: the copy is still verified."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from autotune_cache.cache.swap import relocate
    shutil.copytree(cache, dest, symlinks=True)
    relocate(dest, dest)   # group files name their members by absolute path: point them into the copy
    path = dest / "manifest.json"
    raw = json.loads(path.read_text())
    raw.get("fingerprint", {}).pop("triton_files", None)
    path.write_text(json.dumps(raw, indent=1))
    return dest


def child(cache: Path, args, env: dict[str, str]) -> dict:
    payload = dict(cache_dir=str(cache), target=args.target, emulate=args.emulate, first_call=args.first_call,
                   model=args.model, tp=args.tp, tokens=args.tokens)
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(payload)], capture_output=True, text=True,
                          env=env, timeout=args.timeout)
    if proc.returncode != 0:
        raise SystemExit(f"a benchmark process failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 4), "min": min(values), "max": max(values), "all": values}


FIELDS = ("import_torch_s", "import_triton_s", "import_autotune_cache_s", "install_s", "kernel_import_s",
          "first_call_s", "install_plus_first_call_s")
LABELS = dict(zip(FIELDS, ("import torch", "import triton", "import a_c", "install()", "import kernels",
                           "first call", "install+call"), strict=True))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", required=True, help="a built cache (its manifest records triton_files)")
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per case and page-cache state")
    ap.add_argument("--cold", action="store_true", help="also cold: evict the files' pages before each process")
    ap.add_argument("--full-check-too", action="store_true",
                    help="also the same cache with a manifest that lacks triton_files (the full check at install)")
    ap.add_argument("--first-call", action="store_true", help="also import the kernels and time the first call")
    ap.add_argument("--model", default="qwen3.5-9b")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--target", default="fla")
    ap.add_argument("--emulate", action="store_true", help="a fake sm_90 GPU (CPU tests: the timings mean little)")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the discarded first process per case (tests: the first warm run may then be cold)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds a process may take")
    ap.add_argument("--json-out", default="bench_install.json")
    args = ap.parse_args(argv)

    cache = Path(args.cache_dir).resolve()
    if not (cache / "manifest.json").is_file():
        print(f"bench_install: {cache} holds no manifest.json: build a cache first", file=sys.stderr)
        return 2
    recorded = (json.loads((cache / "manifest.json").read_text()).get("fingerprint") or {}).get("triton_files")
    work = Path(tempfile.mkdtemp(prefix="bench-install-"))
    # install() points Triton at the cache and its misses at an overlay: both here, never the user's own dirs
    env = {**os.environ, "TRITON_CACHE_DIR": str(work / "triton-home"), "AUTOTUNE_CACHE_OVERLAY": str(work / "overlay")}
    try:
        cases = {"deferred": cache}
        if args.full_check_too:
            cases["full check at install"] = without_triton_files(cache, work / "full-check")
        states = ["warm"] + (["cold"] if args.cold else [])
        # What install() and the first call read: triton (its modules, libtriton for triton_key, ptxas), autotune_cache,
        # the cache. Not torch: it is imported before either, timed apart, and 4 GB to read back per cold process.
        roots = [p for p in (package_dir("triton"), package_dir("autotune_cache")) if p]
        libtriton = [p for p in files_under(roots[0] / "_C") if p.name.startswith("libtriton")] if roots else []
        runs: dict[str, dict[str, list[dict]]] = {c: {s: [] for s in states} for c in cases}
        for case_dir in cases.values() if not args.no_warmup else ():   # read everything once: warm is warm
            child(case_dir, args, env)
        for _ in range(args.runs):   # rounds: each case and state once a round, so drift spreads over all
            for case, case_dir in cases.items():
                for state in states:
                    pages = None
                    if state == "cold":
                        evict(files_under(*roots, case_dir))
                        pages = {"libtriton": resident(libtriton), "cache": resident(files_under(case_dir))}
                    one = child(case_dir, args, env)
                    one["resident_at_start"] = pages
                    runs[case][state].append(one)
        result = {"cache_dir": str(cache), "manifest_records_triton_files": recorded is not None, "runs": args.runs,
                  "first_call": args.first_call, "python": sys.version.split()[0], "cases": {}}
        for case in cases:
            for state in states:
                done = runs[case][state]
                result["cases"][f"{case}, {state}"] = {
                    **{f: summary([r[f] for r in done]) for f in FIELDS if all(f in r for r in done)},
                    "processes": done}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.json_out).write_text(json.dumps(result, indent=1))
    shown = [f for f in FIELDS if any(f in c for c in result["cases"].values())]
    print(f"medians of {args.runs} fresh processes (seconds); all values in {args.json_out}")
    print(f"{'case':30s} " + " ".join(f"{LABELS[f]:>14s}" for f in shown))
    for name, c in result["cases"].items():
        print(f"{name:30s} " + " ".join(f"{c[f]['median']:14.4f}" if f in c else f"{'-':>14s}" for f in shown))
    for name, c in result["cases"].items():
        first = c["processes"][0]
        print(f"{name}: at install {first['at_install']}, after the first call {first.get('after_first_call', '-')}, "
              f"mismatches {first['report']['mismatches']}, verified {first['report']['verified']}, "
              f"private copy {'yes' if first['report']['copy_dir'] else 'no'}")
    if not recorded:
        print("note: this cache's manifest records no triton_files (built before it): install() checks triton_key "
              "itself in every case", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
