"""Build wall time: serial in-process autotune vs `autotune-cache build` on one GPU and on several.

(1) serial in-process autotune: for each TP degree, a fresh process with its own empty cache dir makes the serving
    call at every token count the plan drives for it (the keys the build tunes), as a cold server of that TP degree
    would tune them: Triton's own autotuner, compiling while benchmarking. Only the tuning calls are timed (process
    start and imports excluded), and the TP degrees are summed.
(2) `autotune-cache build` for all TP degrees at once, the whole command timed (start, imports, compile workers,
    benchmarks, manifest), once per entry of --gpus (e.g. 1 and 2), each into an empty dir; with --cpus-per-gpu N
    each build is pinned to N cores per GPU.
(3) optional (--serial-build): the build with compile workers off (the child compiles while benchmarking).
For each build the manifest gives the floor: time spent benchmarking (screening + extra timings, summed over
units), how long the children waited for the compile workers (summed over a child's units, the longest child),
the workers' import and compile spans, and how many kernels the benchmarking children still compiled themselves.
Prints a table, writes JSON.

    python scripts/bench_build.py --model qwen3.5-9b --tp 1,2,4,8 --gpus 1,2 [--max-tokens 16384] [--json-out F]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def timed(cmd, env=None):
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc.stdout


def build(args, gpus, env=None, extra=()):
    d = tempfile.mkdtemp(prefix=f"build-gpus{gpus}-")
    prefix = []
    if args.cpus_per_gpu:   # a host of this many cores per GPU: pin the build to them (its workers follow)
        prefix = ["taskset", "-c", f"0-{args.cpus_per_gpu * gpus - 1}"]
    cmd = [*prefix, sys.executable, "-m", "autotune_cache", "build", "--model", args.model, "--tp", args.tp,
           "--max-tokens", str(args.max_tokens), "--cache-dir", d, "--gpus", str(gpus), "--no-progress", "--json",
           *extra]
    seconds, _ = timed(cmd, env)
    with open(os.path.join(d, "manifest.json")) as f:
        m = json.load(f)
    units = m["units"].values()
    waits, compile_s, import_s = {}, [], []   # per GPU: the child's units wait one after another
    for u in units:
        if u.get("precompile"):
            waits[u.get("gpu")] = waits.get(u.get("gpu"), 0.0) + u["precompile"]["seconds"]
            compile_s.append(u["precompile"].get("ready_s") or 0.0)
            import_s.append(u["precompile"].get("import_s") or 0.0)
    return {"seconds": round(seconds, 1), "dir": d, "gpus": gpus, "cpus": args.cpus_per_gpu * gpus or os.cpu_count(),
            "bench_s": round(sum(u.get("bench_seconds") or 0 for u in units), 1),
            "unit_s": round(sum(u.get("seconds") or 0 for u in units), 1),
            "compile_wait_s": round(max(waits.values()), 1) if waits else None,
            "compile_s": max(compile_s, default=None), "compile_import_s": max(import_s, default=None),
            "child_compiles": sum(u.get("compiles") or 0 for u in units),
            "entries": len(m["entries"]), "configs": sum(e["configs"] for e in m["entries"].values())}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen3.5-9b")
    ap.add_argument("--tp", default="1,2,4,8")
    ap.add_argument("--gpus", default="1", help="comma-separated GPU counts to build with (e.g. 1,2)")
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--cpus-per-gpu", type=int, default=0,
                    help="pin each build to this many cores per GPU it uses (taskset; its compile workers follow): "
                         "a one-GPU build on a 2-GPU host then sees what a one-GPU host of that size has")
    ap.add_argument("--serial-build", action="store_true", help="also time a build without compile workers")
    ap.add_argument("--skip-serial", action="store_true", help="skip (1) (when an earlier run of this card has it)")
    ap.add_argument("--json-out", default="bench_build.json")
    args = ap.parse_args()

    from autotune_cache import BuildSpec, models
    from autotune_cache import plan
    tps = tuple(int(t) for t in args.tp.split(","))
    units = plan(BuildSpec(model=models.preset(args.model), tp=tps, max_tokens=args.max_tokens)).units
    result = {"model": args.model, "tp": args.tp, "max_tokens": args.max_tokens, "cpus": os.cpu_count(),
              "serial": {}, "builds": []}
    if not args.skip_serial:
        for tp in tps:   # one cold server per TP degree
            (unit,) = plan(BuildSpec(model=models.preset(args.model), tp=(tp,), max_tokens=args.max_tokens)).units
            _, out = timed([sys.executable, "-m", "autotune_cache.serve.stand_in", "--cache-dir",
                            tempfile.mkdtemp(prefix=f"serial-tp{tp}-"), "--model", args.model, "--tp", str(tp),
                            "--tokens", ",".join(map(str, unit.tokens)), "--json"])
            report = json.loads(out.strip().splitlines()[-1])
            result["serial"][tp] = {"seconds": round(sum(c["seconds"] for c in report["calls"]), 1),
                                    "benchmarks": report["benchmarks"]}
            print(json.dumps({"serial_tp": tp, **result["serial"][tp]}), file=sys.stderr, flush=True)
        result["serial_s"] = round(sum(s["seconds"] for s in result["serial"].values()), 1)
    def save():   # after every step: a run cut short still leaves what it measured
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1)

    save()
    for gpus in (int(g) for g in args.gpus.split(",")):
        result["builds"].append(dict(build(args, gpus), kind="build"))
        print(json.dumps(result["builds"][-1]), file=sys.stderr, flush=True)
        save()
    if args.serial_build:
        b = build(args, 1, env={"AUTOTUNE_CACHE_COMPILE_PROCESSES": "1"}, extra=["--compile-workers", "1"])
        result["builds"].append(dict(b, kind="build, compile workers off"))
    base = result.get("serial_s")
    one = next((b["seconds"] for b in result["builds"] if b["gpus"] == 1 and b["kind"] == "build"), None)
    for b in result["builds"]:
        b["over_serial"] = round(b["seconds"] / base, 3) if base else None
        b["over_1_gpu_build"] = round(b["seconds"] / one, 3) if one else None
    save()

    print(f"{args.model} TP {args.tp}, up to {args.max_tokens} tokens: {sum(len(u.keys) for u in units)} keys in "
          f"{len(units)} units, {os.cpu_count()} CPUs")
    for tp, s in result["serial"].items():
        print(f"  serial in-process autotune, TP {tp} (tuning calls only)  {s['seconds']:8.1f} s  {s['benchmarks']} keys benchmarked")
    if base:
        print(f"{'serial in-process autotune, all TP degrees':54s} {base:8.1f} s")
    for b in result["builds"]:
        label = f"{b['kind']} on {b['gpus']} GPU(s)"
        print(f"{label:54s} {b['seconds']:8.1f} s  "
              f"/serial {b['over_serial']}  /1-GPU build {b['over_1_gpu_build']}  benchmarking {b['bench_s']} s, "
              f"compile wait {b['compile_wait_s']} s (workers: import {b['compile_import_s']} s, compile "
              f"{b['compile_s']} s), child compiles {b['child_compiles']}, {b['cpus']} CPUs, "
              f"{b['entries']} keys, {b['configs']} configs")


if __name__ == "__main__":
    main()
