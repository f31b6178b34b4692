"""The environment a cache was built in, and what must match for a server to hit it (FACTS.md §1)."""
from __future__ import annotations

import os
import platform
import re
import shlex
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from ..autotuner import keys
from ..errors import printable
from .files import sha256_bytes

GPU_HINT = "GPU: "   # the one mismatch after which entries still hit


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
    # triton_files(): the names and sizes of the files triton_key() hashes, "1:<sha256>". None: built before it
    # was recorded; the loader then compares triton_key itself at install().
    triton_files: str | None = None

    @model_serializer(mode="wrap")
    def _omit_unrecorded(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A manifest written before triton_files existed must dump (and so digest and verify its signature) as it
        # was written: the field appears only where it was recorded.
        data = handler(self)
        if self.triton_files is None:
            data.pop("triton_files", None)
        return data

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
    """metadata.version(dist), without its email parser (6 ms a package: install() reads four): the Version field
    of the METADATA header, which core metadata requires; metadata.version() where it is not found."""
    try:
        found = metadata.Distribution.from_name(dist)
        head = (found.read_text("METADATA") or found.read_text("PKG-INFO") or "").split("\n\n", 1)[0]
    except metadata.PackageNotFoundError:
        return None
    for line in head.splitlines():
        if line.startswith("Version:"):
            return line[len("Version:"):].strip()
    return found.version


def _triton_key_sha256() -> str:
    return sha256_bytes(keys.triton_key())


TRITON_FILES_VERSION = "1"   # what triton_files() lists; values of another version are not compared


def triton_files() -> str:
    """The Triton install's cheap identity: "1:" + sha256 of each file triton_key() hashes, by path (relative to the
    triton package) and size. One stat a file (2 ms for Triton 3.6's 29 files) where triton_key() reads 400 MB.

    Sizes only, no mtimes, because the loader uses it one way: two different values prove two different
    triton_keys (a file of another size has other bytes), so install() may report the mismatch at once. Equal values
    prove nothing (a rebuilt libtriton may keep its size), so the full triton_key comparison still runs, at the first
    autotune lookup. Mtimes would break the proof: pip writes every file at install time, so two installs of one
    wheel (the build image and the serving image) differ in mtime and not in triton_key. Not cached (in a file per
    install, say): reading such a file costs what these stats cost, and a stale one could only be wrong."""
    import hashlib
    files = keys.triton_key_files()
    root = files[0].parent.parent
    h = hashlib.sha256()
    for path in files:
        h.update(f"{os.path.relpath(path, root)}\0{path.stat().st_size}\n".encode())
    return f"{TRITON_FILES_VERSION}:{h.hexdigest()}"


def _ptxas(backend_hash: str) -> str | None:
    """"12.8" out of Triton's backend hash (ptxas's --version banner + arch)."""
    found = re.search(r"release (\d+\.\d+)", backend_hash)
    return found.group(1) if found else None


def collect(emulated: bool = False) -> Fingerprint:
    """Read this process's environment. Needs triton and torch; the driver (real or fake) must be active."""
    import torch
    import triton

    backend_hash = keys.backend_hash()
    gpu_name = capability = None
    if torch.cuda.is_available():
        gpu_name = torch.cuda.get_device_name(0)
        capability = "{}.{}".format(*torch.cuda.get_device_capability(0))
    return Fingerprint(
        python=platform.python_version(), triton=triton.__version__, torch=torch.__version__,
        cuda=torch.version.cuda, packages=_packages(),
        gpu_name=gpu_name, capability=capability, ptxas=_ptxas(backend_hash),
        backend_hash=backend_hash, triton_key_sha256=_triton_key_sha256(),
        env=keys.invalidating_env_vars(), emulated=emulated, triton_files=_triton_files_or_none())


def _triton_files_or_none() -> str | None:
    try:
        return triton_files()
    except Exception:  # noqa: BLE001 - a Triton laid out otherwise: no cheap identity, the loader checks triton_key
        return None


def _nvidia_driver() -> bool:
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def here(built: Fingerprint, *, query_gpu: bool, env: dict[str, str] | None = None) -> tuple[Fingerprint, list[str]]:
    """This machine's fingerprint to compare with `built` (a cache's), and notes on what was not read.

    query_gpu and an NVIDIA driver here: collect(), the GPU included. Otherwise (no GPU to ask, or one that must not
    be initialized: vLLM loads plugins before device init) everything that needs no driver: Python, the Triton
    wheel (triton_key()), env vars, packages, and ptxas through Triton's backend hash for the cache's compute
    capability; GPU name, capability and CUDA are copied from `built`, so they compare equal, and a note says so.
    `env`: the cache-invalidating env vars the server runs with (`ensure --triton-env`), None: this process's."""
    found, notes = _here(built, query_gpu=query_gpu)
    return (found if env is None else found.model_copy(update={"env": dict(env)})), notes


def _here(built: Fingerprint, *, query_gpu: bool) -> tuple[Fingerprint, list[str]]:
    if not query_gpu:
        why = "the GPU is not queried here"
    elif not _nvidia_driver():
        # Finding the GPU through Triton's driver imports torch (seconds): without the NVIDIA kernel driver there is
        # no GPU to find, and nothing below needs torch.
        why = "no NVIDIA GPU driver here"
    else:
        try:
            return collect(), []
        except Exception as e:  # noqa: BLE001 - no visible device or a broken driver: use what needs none
            why = f"the GPU could not be queried ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    notes = [f"{why}: GPU model and compute capability not checked (the cache needs sm {built.capability})"]
    found, key_notes = with_keys(without_keys(built))
    return found, notes + key_notes


def without_keys(built: Fingerprint) -> Fingerprint:
    """What install() compares: this machine's fingerprint without what costs (triton_key() hashes 400 MB, 0.4 s;
    the ptxas version is a subprocess) and without the GPU. triton_key_sha256, backend_hash and ptxas are
    `built`'s (they compare equal; with_keys() reads them); triton_files, the cheap identity, is this install's."""
    import triton
    return built.model_copy(update=dict(
        python=platform.python_version(), triton=triton.__version__, torch=_version("torch") or built.torch,
        packages=_packages(), env=keys.invalidating_env_vars(), triton_files=_triton_files_or_none()))


def with_keys(built: Fingerprint) -> tuple[Fingerprint, list[str]]:
    """`built` with this machine's triton_key and ptxas (for the cache's compute capability) in place of its own,
    and notes: what the loader compares at the first autotune lookup, where Triton computes both itself (each is
    cached per process: triton_key() and the ptxas version per arch), so it costs nothing more there."""
    backend_hash, ptxas = built.backend_hash, built.ptxas
    try:
        major, minor = (int(x) for x in (built.capability or "9.0").split("."))
        backend_hash = keys.backend_hash((major, minor))   # runs ptxas, no driver
        ptxas = _ptxas(backend_hash)
        notes = [f"ptxas checked with Triton's ptxas for sm_{major}{minor}: {ptxas}"]
    except Exception as e:  # noqa: BLE001 - no CUDA backend or ptxas here
        notes = [f"ptxas not checked ({type(e).__name__}: {e})"]
    return built.model_copy(update=dict(backend_hash=backend_hash, ptxas=ptxas,
                                        triton_key_sha256=_triton_key_sha256())), notes


def mismatches(built: Fingerprint, here: Fingerprint, *, remedies: bool = True) -> list[str]:
    """Why a cache built in `built` would miss (or behave differently) in `here`; empty when compatible. `remedies`:
    an env var's line says how to make the two agree (env_remedy); off where `here` is no server (a merge of two
    caches, a build into another environment's dir)."""
    out = []
    for field in ("python", "triton", "ptxas", "capability"):
        a, b = getattr(built, field), getattr(here, field)
        if a != b:
            out.append(f"{field}: cache built with {a}, here {b} (every disk key differs)")
    if built.triton == here.triton and built.python == here.python and (
            built.triton_key_sha256 != here.triton_key_sha256 or _files_differ(built.triton_files, here.triton_files)):
        out.append("triton build: same version but a different triton wheel (triton_key differs)")
    if built.backend_hash != here.backend_hash and built.ptxas == here.ptxas and built.capability == here.capability:
        out.append("ptxas build differs (backend hash)")
    for var in sorted(set(built.env) | set(here.env)):
        a, b = built.env.get(var), here.env.get(var)
        if a != b:
            out.append(f"env {var}: cache built with {'it unset' if a is None else repr(a)}, here "
                       f"{'unset' if b is None else repr(b)} (cache-invalidating: every disk key differs)"
                       + (f" - {env_remedy(var, a, b)}" if remedies else ""))
    for pkg in sorted(set(built.packages) & set(here.packages)):
        if built.packages[pkg] != here.packages[pkg]:
            out.append(f"{pkg}: cache built with {built.packages[pkg]}, here {here.packages[pkg]} "
                       "(kernel source or line numbers may differ)")
    if built.gpu_name and here.gpu_name and built.gpu_name != here.gpu_name and not out:
        out.append(f"{GPU_HINT}cache tuned on {built.gpu_name}, here {here.gpu_name} (entries hit; winners may be off)")
    return out


def env_flag(var: str, value: str | None) -> str:
    """The build option that gives a build child `value` of `var` (None: unset): "--triton-env NAME=VALUE", quoted
    for a shell, control characters written out (a manifest's values are echoed)."""
    return "--triton-env " + printable(shlex.quote(f"{var}={value or ''}"))


def env_remedy(var: str, built: str | None, here: str | None) -> str:
    """The two ways to make a server with `here` (None: unset) of a cache-invalidating `var` hit a cache built with
    `built`: rebuild with the server's value, or run the server with the cache's. The one rule, for `verify`,
    `ensure` and the loader (mismatches). Values as Triton reads them ("true" for 1): either is a valid setting."""
    rebuild = f"rebuild with {env_flag(var, here)}" + (" (unset)" if here is None else "")
    server = (f"unset {var}" if built is None else "set " + printable(shlex.quote(f"{var}={built}"))) + " in the server"
    return f"{rebuild}, or {server}"


def env_flags(built: Fingerprint, other: Fingerprint) -> str:
    """The options that give a build `built`'s cache-invalidating env vars where `other`'s differ, e.g.
    "--triton-env TRITON_DEFAULT_FP_FUSION=true"; "" where none differs."""
    differ = sorted(v for v in set(built.env) | set(other.env) if built.env.get(v) != other.env.get(v))
    return " ".join(env_flag(v, built.env.get(v)) for v in differ)


def _files_differ(a: str | None, b: str | None) -> bool:
    """Two triton_files() values that prove different triton_keys: both recorded, by the same definition, unequal."""
    if a is None or b is None:
        return False
    return a.split(":", 1)[0] == b.split(":", 1)[0] and a != b


def misses_here(built: Fingerprint, *, query_gpu: bool, env: dict[str, str] | None = None
                ) -> tuple[list[str], list[str]]:
    """Why a cache built in `built` would miss (or behave differently) here, and notes: what here() could not read,
    and a GPU-name difference (entries still hit: a hint, not a miss). What `verify` and `ensure` report. `env`:
    as here()'s."""
    now, notes = here(built, query_gpu=query_gpu, env=env)
    found = mismatches(built, now)
    return [m for m in found if not m.startswith(GPU_HINT)], notes + [m for m in found if m.startswith(GPU_HINT)]
