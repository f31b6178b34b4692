"""The keys Triton files an autotune result under (FACTS.md §1): the tuning key of one call, and the parts of
every disk key this process would use (`triton_key()`, the backend hash, the cache-invalidating env vars).

None of these is public API: the disk key is assembled inside `Autotuner.check_disk_cache` (3.4-3.9), which offers
no way to ask for it, so the parts are read where it reads them."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def tuning_key(tuner: Any, args: tuple, kwargs: dict) -> tuple:
    """The tuning key Autotuner.run forms for this call (Triton 3.4-3.9): `key=[...]` values, then the dtype of
    every argument that has one."""
    named = {k: v for k, v in {**dict(zip(tuner.arg_names, args, strict=False)), **kwargs}.items()
             if k in tuner.arg_names}
    return tuple([named[k] for k in tuner.keys if k in named]
                 + [str(v.dtype) for v in named.values() if hasattr(v, "dtype")])


def triton_key() -> str:
    """The Triton wheel's key (version, compiler and backend sources, libtriton), through the name the autotuner's
    disk key uses: an emulated build that stands in another host's (emulated.py) is read here too."""
    import triton.runtime.autotuner as at
    return at.triton_key()


def backend_hash(capability: tuple[int, int] | None = None) -> str:
    """The backend's hash (ptxas's version banner + arch), part of every disk key. `capability` (9, 0): for that
    compute capability, without the driver (it runs ptxas only); None: for the active driver's device."""
    from triton.compiler.compiler import make_backend  # looked up per call: emulated.py may stand in another
    if capability is None:
        from triton.runtime.driver import driver
        target = driver.active.get_current_target()
    else:
        from triton.backends.compiler import GPUTarget
        target = GPUTarget("cuda", capability[0] * 10 + capability[1], 32)
    return make_backend(target).hash()


def triton_key_files() -> list[Path]:
    """The files triton_key() hashes, in its order (Triton 3.4-3.9, runtime/cache.py): that module itself, the
    modules of triton.compiler and triton.backends, libtriton, the modules of triton.language. Walked exactly as it
    walks them (tests/test_loader.py hashes this list and compares it with triton_key())."""
    import pkgutil
    import sysconfig

    import triton.runtime.cache as cache_mod
    root = os.path.dirname(os.path.dirname(os.path.abspath(cache_mod.__file__)))

    def modules(sub: str) -> list[Path]:
        found = []
        for lib in pkgutil.walk_packages([os.path.join(root, sub)], prefix=f"triton.{sub}."):
            spec = lib.module_finder.find_spec(lib.name)  # type: ignore[call-arg]  # a FileFinder: one argument
            if spec is None or spec.origin is None:   # triton_key() would fail on it too
                raise FileNotFoundError(f"{lib.name}: no file found")
            found.append(Path(spec.origin))
        return found
    ext = sysconfig.get_config_var("EXT_SUFFIX").split(".")[-1]
    return [Path(cache_mod.__file__), *modules("compiler"), *modules("backends"),
            Path(root, "_C", f"libtriton.{ext}"), *modules("language")]


def invalidating_env_vars() -> dict[str, str]:
    """Triton's cache-invalidating env vars that are set (and non-empty) in this process, as Triton reads them
    (it normalizes some: TRITON_DEFAULT_FP_FUSION=1 reads "true", =0 "false"; an empty value is unset)."""
    try:
        from triton._C.libtriton import get_cache_invalidating_env_vars
    except ImportError:  # older layouts keep it in knobs
        from triton.knobs import get_cache_invalidating_env_vars
    return dict(get_cache_invalidating_env_vars())


_ASK = ("import json, triton; from autotune_cache.autotuner.keys import invalidating_env_vars as f; "
        "print(json.dumps([triton.__version__, f()]))")


def invalidating_env_vars_in(environ: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The Triton version and invalidating_env_vars() of a process started with `environ`: what a build child or
    a server with that environment keys its entries with. Which names count is Triton's list, and it differs per
    version (3.9 adds TRITON_FORCE_DISABLE_FP_FUSION), so Triton is asked: in a fresh Python (0.3 s), so this
    process's own environment is left alone and a build parent imports no Triton. RuntimeError where that fails."""
    import json
    import subprocess
    import sys
    try:
        proc = subprocess.run([sys.executable, "-c", _ASK], env=dict(environ), capture_output=True, text=True,
                              timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"{type(e).__name__}: {e}") from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit status {proc.returncode}")
    version, found = json.loads(proc.stdout.strip().splitlines()[-1])
    return version, found
