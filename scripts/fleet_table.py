"""FLEET.md's numbers: the 7 presets x TP {1,2,4,8} x 4 GPU types, planned with the project's planner (fleet/matrix.py,
pure), with build times and registry size estimated from measured runs (BENCHMARKS.md). Run:

    python scripts/fleet_table.py [--gpu-types H200,H100,A100,L40S] [--tp 1,2,4,8] [--max-tokens 16384]

Model (stated in FLEET.md): a job takes START_S + PER_CONFIG_S x its configs (fit to the H200 build of
qwen3.5-9b TP 1: 34 s for 134 configs, with ~10 s of child start and imports; it predicts 52 s for the 236 configs
of TP 1,2,4,8 where an H100 measured 56.4 s), and a pruned bundle weighs MB_PER_KEY per key (3.5 MB for 9 keys)."""
from __future__ import annotations

import argparse
import heapq

from autotune_cache import shapes
from autotune_cache.fleet import matrix

START_S, PER_CONFIG_S = 10.0, (34.0 - 10.0) / 134
MB_PER_KEY = 3.5 / 9


def job_seconds(job) -> float:
    return START_S + PER_CONFIG_S * job.configs


def wall(seconds: list[float], gpus: int) -> float:
    """Longest-first onto `gpus` GPUs (what Ray's queue does with jobs submitted largest first)."""
    load = [0.0] * gpus
    heapq.heapify(load)
    for s in sorted(seconds, reverse=True):
        heapq.heappush(load, heapq.heappop(load) + s)
    return max(load)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu-types", default="H200,H100,A100,L40S")
    ap.add_argument("--tp", default="1,2,4,8")
    ap.add_argument("--max-tokens", type=int, default=16384)
    a = ap.parse_args()
    gpu_types = a.gpu_types.split(",")
    m = matrix.Matrix(models=tuple(shapes.PRESETS), tp=tuple(int(t) for t in a.tp.split(",")),
                      gpu_types=tuple(gpu_types), max_tokens=a.max_tokens)
    js = matrix.jobs(m)
    t = matrix.totals(js)
    rows = len(m.models) * len(m.tp) * len(gpu_types)
    print(f"matrix: {len(m.models)} presets x TP {a.tp} x {len(gpu_types)} GPU types = {rows} rows "
          f"(GPU type x model x TP), target fla, max {a.max_tokens} tokens")
    print(f"planned: {t['jobs']} build jobs ({t['jobs'] // len(gpu_types)} per GPU type: rows of one per-rank "
          f"shape share a job), {t['units']} units, {t['keys']} keys, {t['configs']} configs to benchmark")
    print()
    one = [j for j in js if j.gpu_type == gpu_types[0]]
    print("| job | models (rows sharing it) | TP | keys | configs | est. build s |")
    print("|---|---|---|---|---|---|")
    for j in one:
        tps = ",".join(str(x) for x in sorted({r.tp for r in j.rows}))
        print(f"| {j.index} | {j.label} | {tps} | {j.keys} | {j.configs} | {job_seconds(j):.0f} |")
    per_type = [job_seconds(j) for j in one]
    print()
    print(f"GPU-seconds per GPU type: {sum(per_type):.0f} s; all {len(gpu_types)} types: "
          f"{sum(per_type) * len(gpu_types):.0f} s")
    print()
    print("| GPUs per type (x4 types) | wall time | speed-up over 1 | idle share |")
    print("|---|---|---|---|")
    base = wall(per_type, 1)
    for n in (1, 2, 4, 8, 16, 32):
        w = wall(per_type, n)
        print(f"| {n} ({n * len(gpu_types)} in all) | {w:.0f} s | {base / w:.2f} | "
              f"{max(0.0, 1 - sum(per_type) / (w * n)):.0%} |")
    keys_per_type = sum(j.keys for j in one)
    print()
    print(f"registry: {t['jobs']} bundles, {t['keys']} keys, about {t['keys'] * MB_PER_KEY:.0f} MB pruned "
          f"({keys_per_type * MB_PER_KEY:.0f} MB per GPU type), {t['jobs']} index entries of ~2 KB")


if __name__ == "__main__":
    main()
