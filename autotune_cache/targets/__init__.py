"""Build targets: one module per kernel source (upstream FLA, vLLM's vendored FLA, SGLang's), and the one registry
that everyone reads (plan, loader, scan, fingerprint, CLI help). A new kernel source is one new module here that
defines a module-level `TARGET`: `registered()` finds it.

A target knows, without importing its kernels, which autotuned kernels its serving call reaches and with
which keys (for the plan), and, inside the child, how to make that call exactly as the server does.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import SpecError
from ..shapes import RankShape

TORCH_DTYPE = {"bfloat16": "torch.bfloat16", "float16": "torch.float16", "float32": "torch.float32",
               "int32": "torch.int32", "int64": "torch.int64"}
DEFAULT = "fla"
SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "int32": "int32", "int64": "int64"}


@dataclass(frozen=True)
class KernelSpec:
    """An autotuned kernel on a target's path and how its tuning key is formed.

    `fields(shape, tokens)` gives the values of the kernel's `key=[...]` arguments; `dtype_roles` names, in
    argument order, the role of every tensor argument (Triton appends each one's dtype to the key).
    """
    name: str
    fields: Callable[[RankShape, int], dict]
    dtype_roles: tuple[str, ...]
    configs_sm90: int | None = None

    def key(self, shape: RankShape, tokens: int, dtypes: dict[str, str]) -> tuple:
        return (tuple(self.fields(shape, tokens).values())
                + tuple(TORCH_DTYPE[dtypes.get(r, r)] for r in self.dtype_roles))


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    module_prefixes: tuple[str, ...]     # where its Autotuner instances live (the loader's business)
    kernels: tuple[KernelSpec, ...]
    default_dtypes: Callable[[RankShape], dict[str, str]]
    # Token counts that reach every key up to max_tokens, one per bucket of the token-dependent key fields.
    token_counts: Callable[[RankShape, int], list[int]]
    # Dotted path of the child-side function run(shape, dtypes, tokens, device) that makes the serving call.
    runner: str
    requires: tuple[str, ...] = field(default=())  # distributions the child needs
    imports: tuple[str, ...] = field(default=())   # kernel modules, imported before a timed call (FLA: ~10 s)

    def run(self, *args, **kwargs):
        module, _, attr = self.runner.rpartition(".")
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)


@functools.lru_cache(maxsize=1)
def _registry() -> dict[str, Target]:
    targets = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        target = getattr(importlib.import_module(f"{__name__}.{info.name}"), "TARGET", None)
        if isinstance(target, Target):
            targets[target.name] = target
    default = targets.pop(DEFAULT, None)   # the default first: help texts and scans list it first
    return {DEFAULT: default, **targets} if default else targets


def registered() -> tuple[Target, ...]:
    """Every target of this package, the default (fla) first. Importing them imports no kernel."""
    return tuple(_registry().values())


def names() -> tuple[str, ...]:
    return tuple(_registry())


def get(name: str) -> Target:
    """A registered target by name, or an importable module that defines a module-level `TARGET`."""
    registry = _registry()
    if name in registry:
        return registry[name]
    if name.isidentifier() or all(part.isidentifier() for part in name.split(".")):
        try:
            return importlib.import_module(name).TARGET
        except ModuleNotFoundError as e:
            if e.name != name.split(".")[0] and e.name != name:
                raise SpecError(f"target module {name!r} failed to import: {e}") from None
        except AttributeError:
            raise SpecError(f"target module {name!r} defines no TARGET") from None
    raise SpecError(f"unknown target {name!r}; known: {', '.join(registry)} (or a module path defining TARGET)")


def dtype_tag(dtypes: dict[str, str]) -> str:
    return "-".join(f"{role}_{SHORT[d]}" for role, d in sorted(dtypes.items()))


def refuse_older_layout(old_module: str, distribution: str, supported: str) -> None:
    """Raise UnsupportedEngineError when `old_module` (an engine's earlier kernel layout) imports: its keys were
    never checked, so no build or server may rely on them. Engine targets call it when their kernels do not import."""
    import importlib
    import importlib.metadata

    from ..errors import UnsupportedEngineError
    try:
        importlib.import_module(old_module)
    except ImportError:
        return
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    raise UnsupportedEngineError(f"{distribution} {version} keeps its FLA kernels in {old_module}, a layout this "
                                 f"target does not describe; supported: {supported}")
