"""Build wall time: serial in-process autotune vs `autotune-cache build` on one GPU and on several.

(1) serial in-process autotune: for each TP degree, a fresh process with its own empty cache dir makes the serving
    call at every token count the plan drives for it (the keys the build tunes), as a cold server of that TP degree
    would tune them: Triton's own autotuner, compiling while benchmarking. Only the tuning calls are timed (process
    start and imports excluded), and the TP degrees are summed.
(2) `autotune-cache build` for all TP degrees at once, the whole command timed (start, imports, compile workers,
    benchmarks, manifest), once per entry of --gpus (e.g. 1, 2 and 4), each into an empty dir; with --cpus-per-gpu N
    each build is pinned to N cores per GPU. From the build's timeline (builder/timeline.py): the fixed cost (the
    parent's start, and each child's start and imports until its hello), and per GPU its busy time (its parts),
    compile wait and benchmarking; each key must be tuned once (by its owner shard), and the winners of every
    multi-GPU build are compared with the one-GPU build's (bench_stability.py's rule).
(3) optional (--serial-build): the build with compile workers off (the child compiles while benchmarking);
    (--overlap): a one-GPU build with --overlap-compile.
For each build the manifest gives the floor: time spent benchmarking (screening + extra timings, summed over
units), how long the children waited for the compile workers (summed over a child's units, the longest child),
the workers' import and compile spans, and how many kernels the benchmarking children still compiled themselves.
Prints a table, writes JSON.

    python scripts/bench_build.py --model qwen3.5-9b --tp 1,2,4,8 --gpus 1,2,4 [--max-tokens 16384] [--json-out F]
    python scripts/bench_build.py --emulate --target toy_shard_target --tp 1,2,4 --max-tokens 2048 --gpus 1,2 \
        --skip-serial      (the CPU check of the script; the toy target needs tests/ on PYTHONPATH)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# The one-GPU build's wall time these fractions of it are the goal for (Qwen3.5 TP 1, 2, 4, 8 key sets)
TARGETS = {2: 0.55, 4: 0.32}


def timed(cmd, env=None):
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc.stdout


def build(args, gpus, env=None, extra=()):
    d = tempfile.mkdtemp(prefix=f"build-gpus{gpus}-")
    timeline = os.path.join(tempfile.mkdtemp(prefix="timeline-"), "timeline.json")
    prefix = []
    if args.cpus_per_gpu:   # a host of this many cores per GPU: pin the build to them (its workers follow)
        prefix = ["taskset", "-c", f"0-{args.cpus_per_gpu * gpus - 1}"]
    cmd = [*prefix, sys.executable, "-m", "autotune_cache", "build", "--model", args.model, "--tp", args.tp,
           "--target", args.target, "--max-tokens", str(args.max_tokens), "--cache-dir", d, "--gpus", str(gpus),
           "--no-progress", "--json", *(["--emulate"] if args.emulate else []), *extra]
    seconds, _ = timed(cmd, {**(env or {}), "AUTOTUNE_CACHE_TIMELINE": timeline})
    with open(os.path.join(d, "manifest.json")) as f:
        m = json.load(f)
    with open(timeline) as f:
        t = json.load(f)
    units = m["units"].values()
    children = []   # per child (a retried shard has more than one): when it started, waited, worked, ended
    for c in t["children"]:
        parts = c["parts"]
        children.append({"gpu": c["gpu"], "shard": c["shard"],
                         "start_s": round(c["hello_s"] - c["spawned_s"], 2) if c["hello_s"] is not None else None,
                         "compile_wait_s": round(sum((p.get("precompile") or {}).get("seconds") or 0
                                                     for p in parts), 2),
                         "busy_s": round(sum(p.get("seconds") or 0 for p in parts), 2),
                         "bench_s": round(sum(p.get("bench_seconds") or 0 for p in parts), 2),
                         "configs": sum(p["configs"] for p in parts), "parts": len(parts),
                         "calls": sum(len(p["tokens"]) for p in parts), "ended_s": c["ended_s"],
                         "compile_s": max(((p.get("precompile") or {}).get("ready_s") or 0 for p in parts),
                                          default=None),
                         "compile_import_s": max(((p.get("precompile") or {}).get("import_s") or 0 for p in parts),
                                                 default=None)})
    starts = [c["start_s"] for c in children if c["start_s"] is not None]
    return {"seconds": round(seconds, 1), "dir": d, "gpus": gpus, "cpus": args.cpus_per_gpu * gpus or os.cpu_count(),
            # the parent's own start (interpreter, imports, plan, lock) and each child's until its hello
            "parent_s": round(seconds - t["wall_s"], 2), "child_start_s": max(starts, default=None),
            "fixed_s": round(seconds - t["wall_s"] + max(starts, default=0), 2),
            "children": children,
            "busy_s_per_gpu": {str(c["gpu"]): round(sum(x["busy_s"] for x in children if x["gpu"] == c["gpu"]), 2)
                               for c in children},
            "bench_s": round(sum(u.get("bench_seconds") or 0 for u in units), 1),
            "unit_s": round(sum(u.get("seconds") or 0 for u in units), 1),
            "compile_wait_s": max((c["compile_wait_s"] for c in children), default=None),
            "compile_s": max((c["compile_s"] or 0 for c in children), default=None),
            "compile_import_s": max((c["compile_import_s"] or 0 for c in children), default=None),
            "child_compiles": sum(u.get("compiles") or 0 for u in units),
            "keys_tuned": t["keys_tuned"], "most_tunings_of_a_key": t["most_tunings_of_a_key"],
            "entries": len(m["entries"]), "configs": sum(e["configs"] for e in m["entries"].values())}


def winners_against_one_gpu(builds):
    """Each multi-GPU build's winners against the one-GPU build's (bench_stability's rule: the same winner for at
    least 90% of the keys, the rest within 2% recorded best spread); None without a one-GPU build."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_stability
    one = next((b for b in builds if b["gpus"] == 1 and b["kind"] == "build"), None)
    if one is None:
        return
    base = bench_stability.load_build("1 GPU", one["dir"])
    for b in builds:
        if b is one or b["kind"] != "build":
            continue
        s = bench_stability.compare([base, bench_stability.load_build(f"{b['gpus']} GPUs", b["dir"])])["summary"]
        b["winners_vs_1_gpu"] = {k: s[k] for k in ("keys", "compared", "same", "differ", "fraction_same",
                                                   "same_target_met", "max_best_spread_differing",
                                                   "spread_target_met")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen3.5-9b")
    ap.add_argument("--tp", default="1,2,4,8")
    ap.add_argument("--gpus", default="1", help="comma-separated GPU counts to build with (e.g. 1,2,4)")
    ap.add_argument("--target", default="fla")
    ap.add_argument("--emulate", action="store_true",
                    help="fake sm_90 GPUs on the CPU (builds take any --gpus): checks the script, its times are fake")
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--cpus-per-gpu", type=int, default=0,
                    help="pin each build to this many cores per GPU it uses (taskset; its compile workers follow): "
                         "a one-GPU build on a 2-GPU host then sees what a one-GPU host of that size has")
    ap.add_argument("--serial-build", action="store_true", help="also time a build without compile workers")
    ap.add_argument("--overlap", action="store_true",
                    help="also time a one-GPU build with --overlap-compile (unit i timed once it is compiled)")
    ap.add_argument("--skip-serial", action="store_true", help="skip (1) (when an earlier run of this card has it)")
    ap.add_argument("--json-out", default="bench_build.json")
    args = ap.parse_args()

    from autotune_cache import BuildSpec, plan, shapes
    tps = tuple(int(t) for t in args.tp.split(","))
    units = plan(BuildSpec(model=shapes.preset(args.model), tp=tps, targets=(args.target,),
                           max_tokens=args.max_tokens)).units
    result = {"model": args.model, "tp": args.tp, "max_tokens": args.max_tokens, "cpus": os.cpu_count(),
              "serial": {}, "builds": []}
    if not args.skip_serial:
        for tp in tps:   # one cold server per TP degree
            (unit,) = plan(BuildSpec(model=shapes.preset(args.model), tp=(tp,), targets=(args.target,),
                                     max_tokens=args.max_tokens)).units
            _, out = timed([sys.executable, "-m", "autotune_cache.serve.stand_in", "--cache-dir",
                            tempfile.mkdtemp(prefix=f"serial-tp{tp}-"), "--model", args.model, "--tp", str(tp),
                            "--target", args.target, "--tokens", ",".join(map(str, unit.tokens)), "--json",
                            *(["--emulate"] if args.emulate else [])])
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
    if args.overlap:
        b = build(args, 1, extra=["--overlap-compile"])
        result["builds"].append(dict(b, kind="build, --overlap-compile"))
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
        b["target_over_1_gpu"] = TARGETS.get(b["gpus"]) if b["kind"] == "build" else None
    winners_against_one_gpu(result["builds"])
    save()

    print(f"{args.model} TP {args.tp}, up to {args.max_tokens} tokens: {sum(len(u.keys) for u in units)} keys in "
          f"{len(units)} units, {os.cpu_count()} CPUs")
    for tp, s in result["serial"].items():
        print(f"  serial in-process autotune, TP {tp} (tuning calls only)  {s['seconds']:8.1f} s  "
              f"{s['benchmarks']} keys benchmarked")
    if base:
        print(f"{'serial in-process autotune, all TP degrees':54s} {base:8.1f} s")
    for b in result["builds"]:
        label = f"{b['kind']} on {b['gpus']} GPU(s)"
        print(f"{label:54s} {b['seconds']:8.1f} s  "
              f"/serial {b['over_serial']}  /1-GPU build {b['over_1_gpu_build']}  benchmarking {b['bench_s']} s, "
              f"compile wait {b['compile_wait_s']} s (workers: import {b['compile_import_s']} s, compile "
              f"{b['compile_s']} s), child compiles {b['child_compiles']}, {b['cpus']} CPUs, "
              f"{b['entries']} keys, {b['configs']} configs")
        target = f" (target <= {b['target_over_1_gpu']})" if b.get("target_over_1_gpu") else ""
        print(f"    fixed {b['fixed_s']} s (parent {b['parent_s']} s, slowest child to hello {b['child_start_s']} s); "
              f"busy per GPU {b['busy_s_per_gpu']}; /1-GPU build {b['over_1_gpu_build']}{target}; "
              f"keys tuned {b['keys_tuned']}, at most {b['most_tunings_of_a_key']}x each")
        for c in b["children"]:
            print(f"      GPU {c['gpu']}: start {c['start_s']} s, compile wait {c['compile_wait_s']} s, busy "
                  f"{c['busy_s']} s (benchmarking {c['bench_s']} s), {c['configs']} configs, {c['parts']} parts, "
                  f"{c['calls']} calls, ended at {c['ended_s']} s")
        if b.get("winners_vs_1_gpu"):
            w = b["winners_vs_1_gpu"]
            print(f"    winners vs the 1-GPU build: {w['same']} of {w['compared']} the same, the rest within "
                  f"{w['max_best_spread_differing']} recorded best spread (re-time: scripts/bench_stability.py "
                  f"--dirs <1-GPU dir> {b['dir']} --retime)")


if __name__ == "__main__":
    main()
