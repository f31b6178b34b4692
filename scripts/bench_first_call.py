"""First GDN prefill call of a fresh process: cold in-process autotune vs a cache built by autotune-cache.

Runs, in one go on one GPU: (1) `autotune-cache build` into a new dir (timed), unless --cache-dir holds one
already; then --runs rounds of fresh processes: (2) an empty TRITON_CACHE_DIR (cold in-process autotune, what a
server does today; a new empty dir each of the first --cold-runs rounds), (3) the dir that (2) left behind (a cache
"warmed by hand"), (4) the built cache through Triton's env vars and (5) through autotune_cache.install() only. The
kernel modules are imported before the timed call. Prints medians and ratios (over the cold and the hand-warmed
medians), and writes every process's values to JSON: its first call, the garbage collections inside it (a full one
over a big heap lands where the heap's growth crosses its threshold: read a slow first call with it), and for (5)
install()'s seconds beside `import triton`'s, timed before it.

    python scripts/bench_first_call.py --model qwen3.5-9b --tp 1 --tokens 4096 [--cache-dir DIR] [--runs 5]
        [--cold-runs N] [--gc-collect] [--json-out F]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def probe(cache_dir, args, *extra):
    env = {**os.environ}
    cmd = [sys.executable, "-m", "autotune_cache.serve.stand_in", "--cache-dir", cache_dir, "--model", args.model,
           "--tp", str(args.tp), "--tokens", str(args.tokens), "--target", args.target, "--json", *extra]
    if args.emulate:
        cmd.append("--emulate")
    if args.gc_collect:
        cmd.append("--gc-collect")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    first = r["calls"][0]
    return {"first_call_s": first["seconds"], "gc_full": first.get("gc_full"), "gc_s": first.get("gc_s"),
            "install_s": r.get("install_s"), "import_triton_s": r.get("import_triton_s"),
            "kernel_import_s": r.get("import_s"), "lookups": r["lookups"], "hits": r["hits"],
            "benchmarks": r["benchmarks"]}


CASES = ("cold in-process autotune", "hand-warmed Triton cache", "built cache, Triton env vars",
         "built cache, install() only")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen3.5-9b")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--cache-dir", help="an already built cache (skips the build step)")
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per case")
    ap.add_argument("--cold-runs", type=int, default=None,
                    help="cold processes (default --runs; each tunes every kernel: ~40 s on an H100)")
    ap.add_argument("--target", default="fla")
    ap.add_argument("--emulate", action="store_true", help="a fake sm_90 GPU (CPU tests: the timings mean little)")
    ap.add_argument("--gc-collect", action="store_true",
                    help="every process collects its garbage before the timed call (stand_in --gc-collect), as vLLM's "
                         "and SGLang's model loaders do after loading the weights: the first calls without the luck of "
                         "where a full collection lands")
    ap.add_argument("--json-out", default="bench_first_call.json")
    args = ap.parse_args()
    cold_runs = args.runs if args.cold_runs is None else max(1, min(args.cold_runs, args.runs))

    result = {"model": args.model, "tp": args.tp, "tokens": args.tokens, "runs": args.runs, "cold_runs": cold_runs,
              "gc_collect": args.gc_collect}
    cache = args.cache_dir
    if cache is None:
        cache = tempfile.mkdtemp(prefix="built-")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "autotune_cache", "build", "--model", args.model, "--tp", str(args.tp),
                        "--cache-dir", cache, "--no-progress"], check=True)
        result["build_s"] = round(time.perf_counter() - start, 2)
    runs = {name: [] for name in CASES}
    cold_dir = None
    for r in range(args.runs):   # rounds: each case once a round, so drift spreads over all of them
        if r < cold_runs:
            cold_dir = tempfile.mkdtemp(prefix="cold-")
            runs[CASES[0]].append(probe(cold_dir, args))
        runs[CASES[1]].append(probe(cold_dir, args))
        runs[CASES[2]].append(probe(cache, args))
        runs[CASES[3]].append(probe(cache, args, "--loader"))
    cold_s = statistics.median(p["first_call_s"] for p in runs[CASES[0]])
    warm_s = statistics.median(p["first_call_s"] for p in runs[CASES[1]])
    result["cases"] = {}
    for name, done in runs.items():
        first = [p["first_call_s"] for p in done]
        median = statistics.median(first)
        result["cases"][name] = {
            "first_call_s": median, "first_call_all": first, "over_cold": round(median / cold_s, 4),
            "over_hand_warmed": round(median / warm_s, 3), "hits": done[0]["hits"], "benchmarks": done[0]["benchmarks"],
            "processes": done}
    with open(args.json_out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{'case':30s} {'first call, median (s)':>22s} {'/cold':>8s} {'/hand-warmed':>12s} {'hits':>5s} "
          f"{'benchmarks':>10s}  all first calls (s)")
    for name, c in result["cases"].items():
        print(f"{name:30s} {c['first_call_s']:22.3f} {c['over_cold']:8.4f} {c['over_hand_warmed']:12.3f} "
              f"{c['hits']:5d} {c['benchmarks']:10d}  {', '.join(f'{v:.3f}' for v in c['first_call_all'])}")
    print("per process: first call s (full collections in it, their s) [install() s, import triton s before it]")
    for name, c in result["cases"].items():
        cells = []
        for p in c["processes"]:
            cell = f"{p['first_call_s']:.3f} ({p['gc_full']}, {p['gc_s']:.3f})"
            if p["install_s"] is not None:
                cell += f" [{p['install_s']:.3f}, {p['import_triton_s']:.3f}]"
            cells.append(cell)
        print(f"  {name}: " + "; ".join(cells))
    if "build_s" in result:
        print(f"build: {result['build_s']} s")


if __name__ == "__main__":
    main()
