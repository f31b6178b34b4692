"""Build wall time: serial in-process autotune vs `autotune-cache build`, serial and with parallel precompilation.

(1) serial in-process autotune: one fresh process with an empty cache dir makes the serving call at every token
    count the plan drives, for every TP degree (the same keys the build tunes), as a server would tune them;
(2) `autotune-cache build` with AUTOTUNE_CACHE_COMPILE_PROCESSES=1 and --compile-workers 1 (the child compiles
    while benchmarking, as Triton does);
(3) `autotune-cache build` as shipped (each unit's configs compiled first by one worker process per core).
All three tune the same keys from an empty dir on the same GPU, one after another. Prints a table, writes JSON.

    python scripts/bench_build.py --model qwen3.5-9b --tp 1 [--max-tokens 16384] [--json-out F]
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen3.5-9b")
    ap.add_argument("--tp", default="1")
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--json-out", default="bench_build.json")
    args = ap.parse_args()

    from autotune_cache import BuildSpec, models, plan
    spec = BuildSpec(model=models.preset(args.model), tp=tuple(int(t) for t in args.tp.split(",")),
                     max_tokens=args.max_tokens)
    units = plan(spec).units
    result = {"model": args.model, "tp": args.tp, "max_tokens": args.max_tokens, "cpus": os.cpu_count(),
              "keys": sum(len(u.keys) for u in units), "configs": sum(k.configs or 0 for u in units for k in u.keys)}
    serial_s = 0.0
    cold = tempfile.mkdtemp(prefix="serial-")
    for unit in units:   # one process per TP degree, as one server per TP degree would
        s, out = timed([sys.executable, "-m", "autotune_cache.probe", "--cache-dir", cold, "--model", args.model,
                        "--tp", str(unit.tp[0]), "--tokens", ",".join(map(str, unit.tokens)), "--json"])
        serial_s += sum(c["seconds"] for c in json.loads(out.strip().splitlines()[-1])["calls"])
    result["serial_in_process_s"] = round(serial_s, 1)
    for name, serial in (("build_compile_workers_1_s", True), ("build_parallel_s", False)):
        d = tempfile.mkdtemp(prefix="build-")
        cmd = [sys.executable, "-m", "autotune_cache", "build", "--model", args.model, "--tp", args.tp,
               "--max-tokens", str(args.max_tokens), "--cache-dir", d, "--no-progress", "--json"]
        if serial:
            cmd += ["--compile-workers", "1"]
        s, _ = timed(cmd, env={"AUTOTUNE_CACHE_COMPILE_PROCESSES": "1"} if serial else None)
        result[name] = round(s, 1)
    result["build_parallel_over_serial"] = round(result["build_parallel_s"] / result["serial_in_process_s"], 3)
    result["build_parallel_over_build_1"] = round(result["build_parallel_s"] / result["build_compile_workers_1_s"], 3)
    with open(args.json_out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{args.model} TP {args.tp}: {result['keys']} keys, {result['configs']} configs, {result['cpus']} CPUs")
    print(f"{'serial in-process autotune (tuning calls only)':48s} {result['serial_in_process_s']:8.1f} s")
    print(f"{'build, compiling while benchmarking (whole command)':48s} {result['build_compile_workers_1_s']:8.1f} s")
    print(f"{'build, worker processes precompile (whole command)':48s} {result['build_parallel_s']:8.1f} s")
    print(f"parallel build / serial in-process: {result['build_parallel_over_serial']}; "
          f"/ build with 1 worker: {result['build_parallel_over_build_1']}")


if __name__ == "__main__":
    main()
