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
from ..errors import NoGPUError, SpecError, printable
from . import gpus
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


def named(gpu_name: str | None, capability: str | None) -> tuple[str | None, str | None]:
    """A GPU named by flags, checked: a capability like "9.0"; a name in NVIDIA's table (gpus.py) gives its
    capability, which a --capability must not contradict; a name not in it needs --capability. SpecError else."""
    if capability is not None:
        parts = capability.split(".")
        if len(parts) != 2 or not all(p.isdigit() and len(p) <= 3 for p in parts):
            raise SpecError(f"--capability must look like 9.0, got {printable(repr(capability)[:40])}")
    if gpu_name is None:
        return None, capability
    if not gpu_name.strip() or len(gpu_name) > 128 or printable(gpu_name) != gpu_name:
        raise SpecError(f"--gpu-name: not a GPU name ({printable(repr(gpu_name)[:60])})")
    known = gpus.lookup(gpu_name)
    if known is None and capability is None:
        raise SpecError(f"--gpu-name {gpu_name}: not a GPU this tool knows the compute capability of; give it "
                        f"with --capability (e.g. 9.0), or name one of {gpus.known_types()}")
    if known is not None and capability is not None and capability != known.capability:
        raise SpecError(f"--gpu-name {gpu_name} is compute capability {known.capability} (NVIDIA's table), not "
                        f"--capability {capability}")
    return gpu_name, capability or (known.capability if known else None)


def detect(gpu_name: str | None = None, capability: str | None = None, *, allow_emulated: bool = False,
           isolated: bool = False) -> Machine:
    """The machine to fetch for: the flags (or AUTOTUNE_CACHE_GPU_NAME / AUTOTUNE_CACHE_CAPABILITY), checked by
    named(), else this machine's GPU; NoGPUError when neither names one."""
    env = settings.current()
    gpu_name, capability = named(gpu_name or env.gpu_name, capability or env.capability)
    if gpu_name is None and capability is None:
        found = _read_gpu(isolated)
        if found is None:
            raise NoGPUError("no NVIDIA GPU here: name the GPU to fetch for, e.g. H200: `fetch --gpu-name H200` "
                             "(and/or --capability 9.0), or AUTOTUNE_CACHE_GPU_NAME=H200 (and/or "
                             "AUTOTUNE_CACHE_CAPABILITY) for `ensure --from` and the vLLM plugin")
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
