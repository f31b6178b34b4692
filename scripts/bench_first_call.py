"""First GDN prefill call of a fresh process: cold in-process autotune vs a cache built by autotune-cache.

Runs, in one go on one GPU: (1) `autotune-cache build` into a new dir (timed), unless --cache-dir holds one
already; (2) a fresh process with an empty TRITON_CACHE_DIR (cold in-process autotune, what a server does
today); (3) a fresh process against the built cache. Prints a table and writes JSON.

    python scripts/bench_first_call.py --model qwen3.5-9b --tp 1 --tokens 4096 [--cache-dir DIR] [--json-out F]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def probe(cache_dir, model, tp, tokens):
    env = {**os.environ}
    proc = subprocess.run([sys.executable, "-m", "autotune_cache.probe", "--cache-dir", cache_dir, "--model", model,
                           "--tp", str(tp), "--tokens", str(tokens), "--json"], capture_output=True, text=True,
                          env=env, check=True)
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
    cold = probe(tempfile.mkdtemp(prefix="cold-"), args.model, args.tp, args.tokens)
    warm = probe(cache, args.model, args.tp, args.tokens)
    result.update(cold_first_call_s=cold["calls"][0]["seconds"], cold_benchmarks=cold["benchmarks"],
                  built_first_call_s=warm["calls"][0]["seconds"], built_hits=warm["hits"],
                  built_lookups=warm["lookups"], built_benchmarks=warm["benchmarks"])
    result["ratio_built_over_cold"] = round(result["built_first_call_s"] / result["cold_first_call_s"], 4)
    with open(args.json_out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{'case':34s} {'first call (s)':>14s} {'benchmarks':>10s}")
    print(f"{'cold in-process autotune':34s} {result['cold_first_call_s']:14.3f} {cold['benchmarks']:10d}")
    print(f"{'built cache (autotune-cache)':34s} {result['built_first_call_s']:14.3f} {warm['benchmarks']:10d}")
    print(f"ratio built/cold: {result['ratio_built_over_cold']:.4f}; hits {warm['hits']}/{warm['lookups']}"
          + (f"; build {result['build_s']} s" if "build_s" in result else ""))


if __name__ == "__main__":
    main()
