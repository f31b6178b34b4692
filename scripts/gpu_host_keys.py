"""On a GPU host: the Triton identity and the autotune disk keys that upstream fla-core's chunk_gated_delta_rule
forward writes for one call, as tests/data/gpu-host-triton-<version>-keys.json holds them (test_fla_keys compares a
fake-GPU build's disk keys with these, byte for byte).

The call: T=64 tokens, varlen (cu_seqlens [0, 64], int64), qwen3.5-9b at TP 1 (H 16, HV 32, K = V = 128), bf16
activations, fp32 state, g fp32 logsigmoid, beta bf16 (autotune_cache.targets.fla.run), TRITON_CACHE_AUTOTUNING=1 in
an empty TRITON_CACHE_DIR, no cache-invalidating env var set. Prints the JSON (and writes it with --out).

    python scripts/gpu_host_keys.py [--out tests/data/gpu-host-triton-X.Y.Z-keys.json]

With --emulate, the same on the fake sm_90 GPU of a CPU machine (autotune_cache.builder.emulation: Triton compiles
every config for real, launches nothing, fake timings): this machine's Triton identity (its own wheel's triton_key
and ptxas) and the keys it files the call under, for a Triton version no GPU host here has run
(tests/data/fake-gpu-triton-X.Y.Z-keys.json). Such a file pins the keys from one run to the next; only a GPU host's
file also proves them equal to a real GPU's.
"""
import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out")
    ap.add_argument("--emulate", action="store_true", help="on the fake sm_90 GPU of a CPU machine")
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="host-keys-")
    os.environ["TRITON_CACHE_DIR"] = cache
    os.environ["TRITON_CACHE_AUTOTUNING"] = "1"
    if args.emulate:
        from autotune_cache.builder import emulation
        emulation.fake_gpu()
    import torch
    import triton

    from autotune_cache.autotuner import keys as tuner_keys
    from autotune_cache.shapes import preset
    from autotune_cache.targets import fla

    shape = preset("qwen3.5-9b").per_rank(1)
    fla.run(shape, fla.default_dtypes(shape), 64, "cpu" if args.emulate else "cuda")
    if not args.emulate:
        torch.cuda.synchronize()
    dirs = {p.name.removesuffix(".autotune.json"): p.parent.name for p in Path(cache).rglob("*.autotune.json")}
    identity = {"triton_key": tuner_keys.triton_key(),
                "backend_hash": tuner_keys.backend_hash(torch.cuda.get_device_capability())}
    report = {
        "what": (f"Triton identity of a {'CPU machine on the fake GPU' if args.emulate else 'GPU host'} "
                 f"({torch.cuda.get_device_name()}, Python {sys.version.split()[0]}, "
                 f"triton {triton.__version__}, torch {torch.__version__}), and the Triton autotune disk keys (cache "
                 "directory names) that upstream fla-core's chunk_gated_delta_rule forward wrote there for one call: "
                 "T=64 tokens, varlen (cu_seqlens [0,64], int64), q/k bf16 [1,64,16,128], v bf16 [1,64,32,128], "
                 "g fp32 logsigmoid, beta bf16, initial state fp32 [1,32,128,128], TRITON_CACHE_AUTOTUNING=1, no "
                 f"cache-invalidating env vars set. Made by scripts/gpu_host_keys.py on {datetime.date.today()}."),
        **identity,
        "autotune_dirs": dirs,
    }
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
