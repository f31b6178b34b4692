"""Which published bundle serves a machine: pure, given the records, the unit ids the request plans, the machine's
GPU, and a `misses` function (fingerprint.mismatches against this machine, computed at the edge: machine.py).

Order of the rules: the bundle must hold every planned unit; its compute capability must be the machine's (when
known); its disk keys must be this machine's (Triton wheel, Python, ptxas, cache-invalidating env vars, kernel
package versions: `misses` is empty); an emulated build only when asked for. Then a bundle tuned on this GPU model
(exact name) wins; else, between GPUs of NVIDIA's table (gpus.py) of one compute capability, one built on the
other, with a warning (FACTS §1: H100 and H200 share entries, their winners may differ). Among equals, the newest.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..amounts import count
from ..errors import NoMatchingBundleError, printable
from . import gpus
from .index import Entry


@dataclass(frozen=True)
class Machine:
    """The GPU a cache is fetched for: this one, or one named (`--gpu-name H200`, `--capability 9.0`) on a machine
    without it (an image build). Example: Machine(gpu_name="NVIDIA H200", capability="9.0")."""
    gpu_name: str | None
    capability: str | None
    allow_emulated: bool = False   # tests: emulated bundles (fake timings) may be chosen


@dataclass(frozen=True)
class Choice:
    record: Entry
    warnings: tuple[str, ...] = field(default=())
    # with a key: the older bundles of record's slot whose entries name that key too, newest first (what a fetch
    # takes when record's own signature turns out not to be the key's: its entry lied)
    older: tuple[Entry, ...] = field(default=())


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[\s_]+", name.lower()) if w]


def gpu_type_of(name: str) -> str:
    """A GPU type, from a device name: the table's (gpus.py) for a known GPU, "NVIDIA H100 80GB HBM3" -> "H100",
    "NVIDIA A100-SXM4-80GB" -> "A100", "NVIDIA GeForce RTX 4090" -> "RTX4090"; else its first word that is no
    vendor word, as Ray names accelerators ("NVIDIA X9 Pro" -> "X9")."""
    known = gpus.lookup(name)
    if known is not None:
        return known.type
    words = [w for w in name.replace("-", " ").split() if w.lower() not in gpus.VENDOR_WORDS]
    return re.sub(r"[^A-Za-z0-9._-]", "", words[0]) if words else "unknown"


def same_gpu(record: Entry, gpu_name: str) -> bool:
    """`gpu_name` ("H200", or a device name "NVIDIA H200") is the GPU type the record was built for, or its device's
    whole name."""
    return (gpu_type_of(gpu_name).lower() == record.gpu_type.lower()
            or _words(gpu_name) == _words(record.fingerprint.gpu_name or ""))


def unfit(r: Entry, machine: Machine, misses: Callable[[Entry], list[str]]) -> str | None:
    """Why bundle `r` cannot serve `machine` (its compute capability, an emulated build, disk keys that would miss
    here), None when it can: the rule `choose` applies to entries, and fetch again to the manifest it imports."""
    fp = r.fingerprint
    if machine.capability and fp.capability != machine.capability:
        return f"{r.gpu_type}: compute capability {fp.capability}, not {machine.capability}"
    if fp.emulated and not machine.allow_emulated:
        return f"{r.gpu_type}: an emulated build (fake timings)"
    if found := misses(r):
        return f"{r.gpu_type} ({fp.gpu_name}): {found[0]}"
    return None


def fallback(fit: list[Entry], gpu_name: str, newest: Callable[[list[Entry]], Entry]) -> Choice:
    """No bundle of `gpu_name`'s own type fits: the newest one built on another GPU that NVIDIA's table (gpus.py)
    gives the same compute capability, with a warning saying so; a GPU not in the table gets none (its capability
    is the user's word, and the other GPU's winners may not be its fastest)."""
    mine = gpus.lookup(gpu_name)
    shared = [r for r in fit if mine is not None and (theirs := gpus.lookup(r.gpu_type)) is not None
              and theirs.capability == mine.capability == r.fingerprint.capability]
    if mine is None or not shared:
        why = (f"{printable(gpu_name)} is not in the GPU table (registry/gpus.py): a bundle of another GPU is "
               "not taken for it" if mine is None else
               f"none of the {len(fit)} that fit was built on a GPU of compute capability {mine.capability} "
               "in the GPU table")
        raise NoMatchingBundleError(f"no bundle built on {printable(gpu_name)}: {why}; publish one built on it")
    r = newest(shared)
    return Choice(r, (f"no bundle built on {printable(gpu_name)}: using one built on "
                      f"{printable(r.fingerprint.gpu_name)} ({r.gpu_type}); both are compute capability "
                      f"{mine.capability} in NVIDIA's table, so every entry hits, but its winners may not be this "
                      "GPU's fastest",))


def choose(records: Iterable[Entry], units: Iterable[str], machine: Machine,
           misses: Callable[[Entry], list[str]], trusted: str | None = None) -> Choice:
    """The bundle for `machine` holding every unit in `units`; NoMatchingBundleError saying why none fits.
    `trusted`: the id of the key a fetch checks signatures with (signing.key_id); bundles whose entry names another
    signer, or none, are skipped with a note (a bundle the key did not sign would be refused at import: one newer
    such bundle must not hide the signed one)."""
    records, need = list(records), set(units)
    if not records:
        raise NoMatchingBundleError("the registry holds no bundle")
    holding = [r for r in records if need <= set(r.units)]
    if not holding:
        raise NoMatchingBundleError(f"no bundle holds the {count(len(need), 'planned unit')} (first: "
                                    f"{sorted(need)[0]}); the registry has {count(len(records), 'bundle')} for "
                                    "other models, TP degrees, kernel sources or --max-tokens")
    why: list[str] = []
    fit = []
    for r in holding:
        if (reason := unfit(r, machine, misses)) is not None:
            why.append(reason)
        else:
            fit.append(r)
    if not fit:
        raise NoMatchingBundleError(f"{count(len(holding), 'bundle')} hold the units, none fits this machine: "
                                    + "; ".join(sorted(set(why))[:4]))
    notes: tuple[str, ...] = ()
    if trusted is not None:
        fit, notes = _trusted_only(fit, trusted)

    def age(r: Entry) -> tuple[str, str]:
        return (r.published, r.bundle_sha256)

    def chosen(r: Entry, warnings: tuple[str, ...]) -> Choice:
        older = sorted((o for o in fit if o.slot == r.slot and o != r), key=age, reverse=True) if trusted else []
        return Choice(r, warnings, tuple(older))

    if machine.gpu_name is None:
        return chosen(max(fit, key=age), notes)
    exact = [r for r in fit if same_gpu(r, machine.gpu_name)]
    if exact:
        return chosen(max(exact, key=age), notes)
    other = fallback(fit, machine.gpu_name, lambda rs: max(rs, key=age))
    return chosen(other.record, notes + other.warnings)


def _signer(r: Entry) -> str:
    return r.signed_by or "unsigned"


def _trusted_only(fit: list[Entry], trusted: str) -> tuple[list[Entry], tuple[str, ...]]:
    """The fitting bundles signed by key `trusted` and a note on those skipped; NoMatchingBundleError naming the
    slots and the signers present when none is."""
    kept = [r for r in fit if r.signed_by == trusted]
    skipped = [r for r in fit if r.signed_by != trusted]
    if not kept:
        slots = sorted({r.slot for r in fit})
        signers = sorted({_signer(r) for r in fit})
        raise NoMatchingBundleError(f"{count(len(fit), 'bundle')} fit this machine (slot {', '.join(slots[:3])}), "
                                    f"but they are not signed by this key ({trusted}): signed by "
                                    f"{', '.join(signers[:6])}")
    if not skipped:
        return kept, ()
    by = sorted({_signer(r) for r in skipped})
    return kept, (f"skipped {count(len(skipped), 'bundle')} not signed by this key ({trusted}; signed by "
                  f"{', '.join(by[:6])}): {', '.join(r.bundle_sha256[:12] for r in skipped[:4])}",)
