"""This machine as a registry sees it: its GPU (read through the CUDA driver API without a context, or named by
flags on a machine without it) and, for a candidate bundle, why its disk keys would miss here
(fingerprint.here/mismatches: the Triton wheel, Python, ptxas for the bundle's compute capability, env vars,
kernel packages; none of it needs the GPU)."""
from __future__ import annotations

import json
import subprocess
import sys

from .. import settings
from ..cache import fingerprint
from ..errors import NoGPUError
from .index import Entry
from .select import Machine


def _read_gpu(isolated: bool) -> tuple[str, str] | None:
    """(name, "9.0") of CUDA device 0, None without one. isolated: in a subprocess, so that this process never
    calls cuInit (a vLLM process forks its workers after the plugin ran: CUDA must stay untouched there)."""
    if not isolated:
        from ..builder import device
        p = device.read()
        return None if p is None else (p.name, f"{p.major}.{p.minor}")
    code = ("import json; from autotune_cache.builder import device; p = device.read(); "
            "print(json.dumps(None if p is None else [p.name, f'{p.major}.{p.minor}']))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
        found = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return tuple(found) if found else None


def detect(gpu_name: str | None = None, capability: str | None = None, *, allow_emulated: bool = False,
           isolated: bool = False) -> Machine:
    """The machine to fetch for: the flags (or AUTOTUNE_CACHE_GPU_NAME / AUTOTUNE_CACHE_CAPABILITY), else this
    machine's GPU; NoGPUError when neither names one."""
    env = settings.current()
    gpu_name = gpu_name or env.gpu_name
    capability = capability or env.capability
    if capability is not None:
        parts = capability.split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            from ..errors import SpecError
            raise SpecError(f"--capability must look like 9.0, got {capability!r:.40}")
    if gpu_name is None and capability is None:
        found = _read_gpu(isolated)
        if found is None:
            raise NoGPUError("no NVIDIA GPU here: name the GPU to fetch for with --gpu-name (e.g. H200) and/or "
                             "--capability (e.g. 9.0), or AUTOTUNE_CACHE_GPU_NAME")
        gpu_name, capability = found
    allow_emulated = allow_emulated or env.allow_emulated
    return Machine(gpu_name=gpu_name, capability=capability, allow_emulated=allow_emulated)


class Here:
    """Why a record's disk keys would miss on this machine: fingerprint.mismatches against this machine's
    fingerprint for the record's compute capability (computed once per capability: it runs ptxas)."""

    def __init__(self):
        self._memo: dict[str | None, fingerprint.Fingerprint] = {}

    def fingerprint_for(self, built: fingerprint.Fingerprint) -> fingerprint.Fingerprint:
        cap = built.capability
        if cap not in self._memo:
            self._memo[cap] = fingerprint.here(built, query_gpu=False)[0]
        now = self._memo[cap]
        return built.model_copy(update={k: getattr(now, k) for k in (
            "python", "triton", "torch", "packages", "backend_hash", "ptxas", "triton_key_sha256", "env")})

    def misses(self, record: Entry) -> list[str]:
        built = record.fingerprint
        found = fingerprint.mismatches(built, self.fingerprint_for(built))
        return [m for m in found if not m.startswith(fingerprint.GPU_HINT)]
