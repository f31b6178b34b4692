"""The environment a cache was built in, and what must match for a server to hit it (FACTS.md §1)."""
from __future__ import annotations

import hashlib
import platform
import re
from importlib import metadata

from pydantic import BaseModel, ConfigDict

def invalidating_env_vars() -> dict[str, str]:
    """Triton's cache-invalidating env vars that are set (and non-empty) in this process."""
    try:
        from triton._C.libtriton import get_cache_invalidating_env_vars
    except ImportError:  # older layouts keep it in knobs
        from triton.knobs import get_cache_invalidating_env_vars  # type: ignore
    return dict(get_cache_invalidating_env_vars())




class Fingerprint(BaseModel):
    """Example: triton 3.6.0, torch 2.11.0+cu130, NVIDIA H100 80GB HBM3 (9.0), ptxas 12.8, no env vars."""
    model_config = ConfigDict(frozen=True)

    python: str                    # "3.12.3": triton_key() hashes libtriton.so, which differs per Python minor
    triton: str
    torch: str
    cuda: str | None               # torch.version.cuda
    packages: dict[str, str]       # kernel sources installed: {"fla-core": "0.6.0"}
    gpu_name: str | None           # informative: H100 and H200 share entries
    capability: str | None         # "9.0"
    ptxas: str | None              # "12.8"
    backend_hash: str | None       # Triton backend hash: ptxas version banner + arch, part of every disk key
    triton_key_sha256: str         # sha256 of triton_key(), part of every disk key
    env: dict[str, str]            # Triton's cache-invalidating env vars set in the child, e.g. {}
    emulated: bool = False         # built on a fake sm_90 driver (tests): timings are meaningless

    def key_identity(self) -> tuple:
        """What enters every disk key: equal identities mean equal disk keys for equal calls."""
        return (self.triton_key_sha256, self.backend_hash, tuple(sorted(self.env.items())))


def kernel_packages() -> tuple[str, ...]:
    """The distributions that ship the registered targets' kernels, e.g. ("fla-core", "vllm", "sglang")."""
    from .. import targets
    return tuple(dict.fromkeys(d for t in targets.registered() for d in t.requires))


def _packages() -> dict[str, str]:
    """Kernel sources installed here and their versions: {"fla-core": "0.6.0"}."""
    return {p: v for p in kernel_packages() if (v := _version(p))}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def collect(emulated: bool = False) -> Fingerprint:
    """Read this process's environment. Needs triton and torch; the driver (real or fake) must be active."""
    import torch
    import triton
    from triton.compiler.compiler import make_backend
    from triton.runtime.autotuner import triton_key
    from triton.runtime.driver import driver


    target = driver.active.get_current_target()
    backend_hash = make_backend(target).hash()
    ptxas = re.search(r"release (\d+\.\d+)", backend_hash)
    gpu_name = capability = None
    if torch.cuda.is_available():
        gpu_name = torch.cuda.get_device_name(0)
        capability = "%d.%d" % tuple(torch.cuda.get_device_capability(0))
    return Fingerprint(
        python=platform.python_version(), triton=triton.__version__, torch=torch.__version__,
        cuda=torch.version.cuda, packages=_packages(),
        gpu_name=gpu_name, capability=capability, ptxas=ptxas.group(1) if ptxas else None,
        backend_hash=backend_hash, triton_key_sha256=hashlib.sha256(triton_key().encode()).hexdigest(),
        env=invalidating_env_vars(), emulated=emulated)


def collect_without_gpu(built: Fingerprint) -> Fingerprint:
    """This process's fingerprint from what needs no GPU (Triton, Python, packages, env vars); the GPU-side
    fields are copied from `built`, so comparing with it reports only the parts checked here."""
    import torch
    import triton
    from triton.runtime.autotuner import triton_key   # the name the autotuner's disk key uses

    return built.model_copy(update=dict(
        python=platform.python_version(), triton=triton.__version__, torch=torch.__version__, cuda=torch.version.cuda,
        packages=_packages(),
        triton_key_sha256=hashlib.sha256(triton_key().encode()).hexdigest(), env=invalidating_env_vars()))


def mismatches(built: Fingerprint, here: Fingerprint) -> list[str]:
    """Why a cache built in `built` would miss (or behave differently) in `here`; empty when compatible."""
    out = []
    for field in ("python", "triton", "ptxas", "capability"):
        a, b = getattr(built, field), getattr(here, field)
        if a != b:
            out.append(f"{field}: cache built with {a}, here {b} (every disk key differs)")
    if built.triton == here.triton and built.python == here.python and built.triton_key_sha256 != here.triton_key_sha256:
        out.append("triton build: same version but a different triton wheel (triton_key differs)")
    if built.backend_hash != here.backend_hash and built.ptxas == here.ptxas and built.capability == here.capability:
        out.append("ptxas build differs (backend hash)")
    for var in sorted(set(built.env) | set(here.env)):
        a, b = built.env.get(var), here.env.get(var)
        if a != b:
            out.append(f"env {var}: cache built with {a!r}, here {b!r} (cache-invalidating: every disk key differs)")
    for pkg in sorted(set(built.packages) & set(here.packages)):
        if built.packages[pkg] != here.packages[pkg]:
            out.append(f"{pkg}: cache built with {built.packages[pkg]}, here {here.packages[pkg]} "
                       "(kernel source or line numbers may differ)")
    if built.gpu_name and here.gpu_name and built.gpu_name != here.gpu_name and not out:
        out.append(f"GPU: cache tuned on {built.gpu_name}, here {here.gpu_name} (entries hit; winners may be off)")
    return out
