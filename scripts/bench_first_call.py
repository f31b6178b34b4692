"""First GDN prefill call of a fresh process: cold in-process autotune vs a cache built by autotune-cache.

Runs, in one go on one GPU: (1) `autotune-cache build` into a new dir (timed), unless --cache-dir holds one
already; (2) a fresh process with an empty TRITON_CACHE_DIR (cold in-process autotune, what a server does
today); (3) a fresh process against the dir that (2) left behind (a cache "warmed by hand"); (4) a fresh process
against the built cache through Triton's env vars and (5) through autotune_cache.install() only. The kernel
modules are imported before the timed call. Prints a table and writes JSON.

    python scripts/bench_first_call.py --model qwen3.5-9b --tp 1 --tokens 4096 [--cache-dir DIR] [--json-out F]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def probe(cache_dir, model, tp, tokens, *extra):
    env = {**os.environ}
    proc = subprocess.run([sys.executable, "-m", "autotune_cache.serve.stand_in", "--cache-dir", cache_dir,
                           "--model", model, "--tp", str(tp), "--tokens", str(tokens), "--json", *extra],
                          capture_output=True,
                          text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen3.5-9b")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--cache-dir", help="an already built cache (skips the build step)")
    ap.add_argument("--json-out", default="bench_first_call.json")
    args = ap.parse_args()

    result = {"model": args.model, "tp": args.tp, "tokens": args.tokens}
    cache = args.cache_dir
    if cache is None:
        cache = tempfile.mkdtemp(prefix="built-")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "autotune_cache", "build", "--model", args.model, "--tp", str(args.tp),
                        "--cache-dir", cache, "--no-progress"], check=True)
        result["build_s"] = round(time.perf_counter() - start, 2)
    cold_dir = tempfile.mkdtemp(prefix="cold-")
    cases = {"cold in-process autotune": probe(cold_dir, args.model, args.tp, args.tokens),
             "hand-warmed Triton cache": probe(cold_dir, args.model, args.tp, args.tokens),
             "built cache, Triton env vars": probe(cache, args.model, args.tp, args.tokens),
             "built cache, install() only": probe(cache, args.model, args.tp, args.tokens, "--loader")}
    cold_s = cases["cold in-process autotune"]["calls"][0]["seconds"]
    warm_s = cases["hand-warmed Triton cache"]["calls"][0]["seconds"]
    result["cases"] = {name: {"first_call_s": r["calls"][0]["seconds"], "import_s": r.get("import_s"),
                              "lookups": r["lookups"], "hits": r["hits"], "benchmarks": r["benchmarks"],
                              "over_cold": round(r["calls"][0]["seconds"] / cold_s, 4),
                              "over_hand_warmed": round(r["calls"][0]["seconds"] / warm_s, 3)}
                       for name, r in cases.items()}
    with open(args.json_out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{'case':32s} {'first call (s)':>14s} {'/cold':>8s} {'/hand-warmed':>12s} {'hits':>5s} {'benchmarks':>10s}")
    for name, c in result["cases"].items():
        print(f"{name:32s} {c['first_call_s']:14.3f} {c['over_cold']:8.4f} {c['over_hand_warmed']:12.3f} "
              f"{c['hits']:5d} {c['benchmarks']:10d}")
    if "build_s" in result:
        print(f"build: {result['build_s']} s")


if __name__ == "__main__":
    main()
