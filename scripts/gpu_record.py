"""On a GPU: record the autotune lookups of real forwards, build exactly those with the CLI, serve them. One run.

    python scripts/gpu_record.py [--out DIR] [--families kda,mamba2,gla,gdn] [--budget-s 450]

Per family (shapes from scripts/data/record_models.json, which cites each config):
  kda     fla-core's chunk_kda, Kimi-Linear-48B-A3B's KDA layer (32 heads of 128, bf16, fp32 state)
  mamba2  vLLM 0.33's Mamba2 SSD (mamba_chunk_scan_combined_varlen), Nemotron-H-8B (128 heads of 64, 8 groups)
  gla     fla-core's chunk_gla: an op no code of this project names, recorded and built with no code change
  gdn     parity: the fla target's own build against a build from a record of its serving call (same files)
1. `autotune-cache record --out F.jsonl -- python gpu_record.py _work F`: a fresh process (empty Triton cache,
   TRITON_CACHE_AUTOTUNING=1) runs varlen prefills of 1024 and 4096 tokens: the in-process cold first call.
2. `autotune-cache build --from-record F.jsonl --cache-dir F-cache`.
3. A fresh process with install(F-cache) (no module named: the manifest names them) runs other batches (700 to
   4096 tokens, 1 to 5 sequences): it must hit every lookup, benchmark nothing, compile nothing.
Prints one JSON summary (also DIR/summary.json). Families left when --budget-s runs out are reported as skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = json.loads((HERE / "data" / "record_models.json").read_text())
RECORD_TOKENS = ((1024, 3), (4096, 3))                          # (total tokens, sequences) recorded
SERVE_TOKENS = ((700, 1), (1500, 2), (3000, 5), (4096, 4))      # ... served afterwards: other batches


def _cu(total: int, n: int, device: str, dtype):
    import torch
    cuts = sorted({0, total, *(total * i // n for i in range(1, n))})
    return torch.tensor(cuts, dtype=dtype, device=device)


# The modules each family's forward imports: imported before the clock starts, so a first call's time is the
# kernels' (tuning, compiling or loading from the cache), not the import of fla or vLLM (seconds on either side).
MODULES = {"kda": "fla.ops.kda", "gla": "fla.ops.gla", "gdn": "fla.ops.gated_delta_rule",
           "mamba2": "vllm.model_executor.layers.mamba.ops.ssd_combined"}


def forward(family: str, total: int, n: int, device: str = "cuda") -> None:
    import torch
    import torch.nn.functional as F
    bf16 = torch.bfloat16
    if family == "kda":
        from fla.ops.kda import chunk_kda
        m = MODELS["kimi-linear-48b-a3b"]
        H, D = m["num_heads"], m["head_dim"]
        q, k, v = (torch.randn(1, total, H, D, dtype=bf16, device=device) for _ in range(3))
        g = F.logsigmoid(torch.randn(1, total, H, D, device=device))
        beta = torch.rand(1, total, H, device=device).sigmoid().to(bf16)
        h0 = torch.zeros(n, H, D, D, dtype=torch.float32, device=device)
        chunk_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True,
                  cu_seqlens=_cu(total, n, device, torch.long))
    elif family == "gla":
        from fla.ops.gla import chunk_gla
        m = MODELS["gla"]
        H, K, V = m["num_heads"], m["head_k_dim"], m["head_v_dim"]
        q, k = (torch.randn(1, total, H, K, dtype=bf16, device=device) for _ in range(2))
        v = torch.randn(1, total, H, V, dtype=bf16, device=device)
        g = F.logsigmoid(torch.randn(1, total, H, K, device=device)).to(bf16)
        h0 = torch.zeros(n, H, K, V, dtype=torch.float32, device=device)
        chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=_cu(total, n, device, torch.long))
    elif family == "mamba2":
        from vllm.model_executor.layers.mamba.ops.ssd_combined import mamba_chunk_scan_combined_varlen
        m = MODELS["nemotron-h-8b"]
        nh, hd, ng, ds, cs = (m[f] for f in ("mamba_num_heads", "mamba_head_dim", "n_groups", "ssm_state_size",
                                             "chunk_size"))
        cu = _cu(total, n, device, torch.int32)
        cu_chunks, last, seq_idx = _chunk_metadata(cu.tolist(), cs, device)
        x = torch.randn(total, nh, hd, dtype=bf16, device=device)
        dt = torch.randn(total, nh, dtype=bf16, device=device)
        B, C = (torch.randn(total, ng, ds, dtype=bf16, device=device) for _ in range(2))
        states = torch.zeros(n + 2, nh, hd, ds, dtype=torch.float32, device=device)   # the server's state slots
        mamba_chunk_scan_combined_varlen(
            x, dt, -torch.rand(nh, device=device), B, C, chunk_size=cs, cu_seqlens=cu, cu_chunk_seqlens=cu_chunks,
            last_chunk_indices=last, seq_idx=seq_idx, out=torch.empty_like(x), D=torch.ones(nh, device=device),
            z=None, dt_bias=torch.zeros(nh, device=device), initial_states=None, dt_softplus=True,
            dt_limit=(0.0, float("inf")), state_dtype=torch.float32, final_states_out=states,
            final_state_indices=torch.arange(2, n + 2, dtype=torch.int32, device=device))
    elif family == "gdn":
        from autotune_cache.shapes import preset
        from autotune_cache.targets import fla
        shape = preset("qwen3.5-9b").per_rank(1)
        fla.run(shape, fla.default_dtypes(shape), total, device)
    else:
        raise SystemExit(f"unknown family {family}")


def _chunk_metadata(cuts: list[int], chunk_size: int, device: str):
    """vLLM 0.33's compute_varlen_chunk_metadata (v1/attention/backends/mamba2_attn.py), without importing the
    attention backends: logical chunks never cross a sequence or a physical chunk boundary."""
    import torch
    lens, seq_idx, last = [], [], [-1] * (len(cuts) - 1)
    for b, (s, e) in enumerate(zip(cuts, cuts[1:], strict=False)):
        pos = s
        while pos < e:
            take = min(chunk_size - pos % chunk_size, e - pos)
            lens.append(take)
            seq_idx.append(b)
            last[b] = len(lens) - 1
            pos += take
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    return tuple(torch.tensor(v, dtype=torch.int32, device=device) for v in (cu, last, seq_idx))


def work(family: str, phase: str, cache: str | None) -> None:
    """One process's calls; prints JSON: first call seconds, and (serve) the loader's counts."""
    import torch

    from autotune_cache.autotuner import compiles, hooks
    benchmarks = 0
    report = None
    if phase == "serve":
        import autotune_cache
        report = autotune_cache.install(cache)

    def bench(call, self, *args, **kwargs):
        nonlocal benchmarks
        benchmarks += 1
        return call(self, *args, **kwargs)

    hooks.add("listen", "_bench", bench)   # a counter that calls on ("listen": under any room's hooks)
    compiled = compiles.count()            # live; None where Triton has no compilation listener: reported as null
    batches = RECORD_TOKENS if phase == "record" else SERVE_TOKENS
    import importlib
    importlib.import_module(MODULES[family])
    torch.empty(1, device="cuda")   # CUDA's context too, outside the first call's time
    times = []
    for total, n in batches:
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            forward(family, total, n)
        torch.cuda.synchronize()
        times.append(round(time.perf_counter() - start, 3))
    print(json.dumps({"first_call_s": times[0], "call_s": times, "benchmarks": benchmarks,
                      "compiles": compiled["compiled"] if compiled is not None else None,
                      "loader": report.totals if report else None,
                      "flipped": len(report.flipped) if report else None}))


def _run(cmd, env=None, timeout=600):
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    return proc, round(time.monotonic() - start, 1)


def _last_json(text: str):
    try:   # the CLI's --json: one indented document
        return json.loads(text)
    except ValueError:
        pass
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None


def _cli(*args, timeout=600):
    proc, seconds = _run([sys.executable, "-m", "autotune_cache", *map(str, args)], timeout=timeout)
    return proc, seconds


def family_run(family: str, out: Path, deadline: float) -> dict:
    rec, cache, cold = out / f"{family}.jsonl", out / f"{family}-cache", out / f"{family}-cold"
    result = {"family": family}
    proc, result["record_s"] = _run(
        [sys.executable, "-m", "autotune_cache", "record", "--out", str(rec), "--", sys.executable, __file__, "_work",
         family, "record"], env={"TRITON_CACHE_DIR": str(cold), "TRITON_CACHE_AUTOTUNING": "1"},
        timeout=max(30, deadline - time.monotonic()))
    result["cold"] = _last_json(proc.stdout)
    if proc.returncode != 0 or result["cold"] is None:
        return {**result, "ok": False, "error": proc.stderr[-2000:]}
    from autotune_cache.record import read
    loaded = read([rec])
    result["recorded"] = {"lines": loaded.lines, "lookups": len(loaded.records),
                          "kernels": sorted({r.kernel.label for r in loaded.records})}
    proc, result["build_s"] = _cli("build", "--from-record", rec, "--cache-dir", cache, "--json", "--no-progress",
                                   timeout=max(30, deadline - time.monotonic()))
    result["build"] = _last_json(proc.stdout)
    if proc.returncode != 0:
        return {**result, "ok": False, "error": proc.stderr[-2000:]}
    proc, result["serve_s"] = _run([sys.executable, __file__, "_work", family, "serve", "--cache", str(cache)],
                                   env={"TRITON_CACHE_AUTOTUNING": ""}, timeout=max(30, deadline - time.monotonic()))
    served = result["serve"] = _last_json(proc.stdout)
    if proc.returncode != 0 or served is None:
        return {**result, "ok": False, "error": proc.stderr[-2000:]}
    loader = served["loader"]
    result["ok"] = bool(loader["lookups"] and loader["hits"] == loader["lookups"] and served["benchmarks"] == 0
                        and served["compiles"] == 0)
    result["first_call_cold_s"], result["first_call_built_s"] = result["cold"]["first_call_s"], served["first_call_s"]
    return result


def gdn_parity(out: Path, deadline: float) -> dict:
    """The fla target's build and a build from a record of its serving call write the same autotune files."""
    target, replay, rec = out / "gdn-target", out / "gdn-replay", out / "gdn.jsonl"
    proc, target_s = _cli("build", "--model", "qwen3.5-9b", "--tp", "1", "--max-tokens", "64", "--cache-dir", target,
                          "--no-progress", "--json", timeout=max(30, deadline - time.monotonic()))
    if proc.returncode != 0:
        return {"family": "gdn", "ok": False, "error": proc.stderr[-2000:]}
    proc, _ = _run([sys.executable, "-m", "autotune_cache", "record", "--out", str(rec), "--", sys.executable, "-c",
                    f"import sys; sys.path.insert(0, {str(HERE)!r}); import gpu_record, torch; "
                    "gpu_record.forward('gdn', 64, 1); torch.cuda.synchronize()"],
                   env={"TRITON_CACHE_DIR": str(target), "TRITON_CACHE_AUTOTUNING": "1"})
    if proc.returncode != 0:
        return {"family": "gdn", "ok": False, "error": proc.stderr[-2000:]}
    proc, replay_s = _cli("build", "--from-record", rec, "--cache-dir", replay, "--no-progress", "--json",
                          timeout=max(30, deadline - time.monotonic()))
    summary = _last_json(proc.stdout)

    def files(root):
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.autotune.json"))

    same = files(target) == files(replay)
    return {"family": "gdn", "ok": proc.returncode == 0 and same and len(files(target)) == 6,
            "same_files": same, "files": files(replay), "target_build_s": target_s, "replay_build_s": replay_s,
            "replay_summary": summary, **({"error": proc.stderr[-2000:]} if proc.returncode != 0 else {})}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_work":
        ap = argparse.ArgumentParser()
        ap.add_argument("family")
        ap.add_argument("phase", choices=("record", "serve"))
        ap.add_argument("--cache")
        args = ap.parse_args(sys.argv[2:])
        work(args.family, args.phase, args.cache)
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="where records and caches go (default: a temp dir, removed)")
    ap.add_argument("--families", default="kda,mamba2,gla,gdn")
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting families past this (default 450)")
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu-record-"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    deadline = start + args.budget_s
    results = []
    for family in args.families.split(","):
        if time.monotonic() > deadline - 30:
            results.append({"family": family, "ok": False, "skipped": "out of time"})
            continue
        try:
            results.append(gdn_parity(out, deadline) if family == "gdn" else family_run(family, out, deadline))
        except subprocess.TimeoutExpired as e:
            results.append({"family": family, "ok": False, "error": f"timed out: {e.cmd[:4]}"})
        print(json.dumps(results[-1]), file=sys.stderr)
    summary = {"ok": all(r["ok"] for r in results), "seconds": round(time.monotonic() - start, 1),
               "families": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
