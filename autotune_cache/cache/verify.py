"""Will a server hit this cache, and may it trust it? Checks, each a frozen record of problems (fail) and notes.
The first three (and signature) show trust.assess(), the decision the loader acts on, under a policy that requires
a manifest: a problem there is a reason the loader refuses the dir, word for word.

- checksums: every file the manifest lists is on disk with its size and sha256, and no file on disk that it does
  not list (foreign), no link or special file (trust: files); beyond trust, what makes a server miss: a manifest
  whose entries and file list disagree, an entry without its file, compiled kernels whose group file points into
  another directory (a cache moved without `import`: the loader serves it, and compiles them);
- permissions: the dir, every entry in it and every parent are owned by this user or root, and none is writable by
  users other than the owner (a parent may be, with the sticky bit) (unless allowed: then notes);
- signature (with a public key): manifest.sig is a valid ed25519 signature of the manifest (signing.py);
- compatibility: the manifest's fingerprint against this machine (fingerprint.here, querying the GPU if there is
  one, and fingerprint.mismatches), and no emulated build (fake timings: arbitrary winners) unless allowed
  (`emulated_problem`, which `ensure` applies too);
- coverage: every (kernel, key) a model/TP plan will look up is an intact autotune file here. Computed from the
  plan (pure), without running a kernel. A planned key whose configs pruned to one in the build is covered without
  a file: the plan cannot tell such keys (pruning depends on the call's arguments), so the build child reports each
  one it reached where Triton (3.8+) made no lookup, and the manifest lists it under its unit (PrunedKey). A server
  on the same Triton looks it up nowhere; on 3.6 the same key is looked up and the build wrote its file.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..amounts import count, size
from ..autotuner import versions
from . import fingerprint, integrity
from .integrity import FileCheck
from .manifest import MANIFEST_NAME
from .scan import AutotuneRecord, CacheScan
from .trust import Policy, TrustReport, assess, writable_reason


@dataclass(frozen=True)
class Check:
    """One check. ok = no problems; notes never fail it. Example: Check("coverage", True, (), ("14 of 14 ...",))."""
    name: str
    ok: bool
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    details: tuple[dict, ...] = field(default=())   # per-key rows of the coverage check


@dataclass(frozen=True)
class Verification:
    cache_dir: Path
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_dict(self) -> dict:
        return {"cache_dir": str(self.cache_dir), "ok": self.ok,
                "checks": {c.name: dict(asdict(c), problems=list(c.problems), notes=list(c.notes),
                                        details=list(c.details)) for c in self.checks}}


# -- checksums ------------------------------------------------------------------------------------------------
def require_intact(s: CacheScan, what: str):
    """The scan's manifest, or CacheDirError when there is none or a listed file differs: what `export` and
    `merge` (`what`) may only copy from."""
    from ..errors import CacheDirError
    if s.manifest is None:
        raise CacheDirError(f"{s.root}: no readable manifest.json; {what} needs a cache built by autotune-cache")
    changed = changed_files(s)
    if changed:
        rel, why = next(iter(sorted(changed.items())))
        raise CacheDirError(f"{s.root}: {count(len(changed), 'file')} {'differs' if len(changed) == 1 else 'differ'} "
                            f"from the manifest (first: {rel}: {why}); run `autotune-cache verify` on it, then "
                            "rebuild or prune")
    return s.manifest


def changed_files(s: CacheScan, check: FileCheck | None = None) -> dict[str, str]:
    """Manifest-listed files that are missing or differ (or are a link): path -> why. Hashes every listed file."""
    if s.manifest is None:
        return {}
    check = check or integrity.check_files(s.root, s.manifest)
    return {p.path: p.detail for p in check.problems if p.path in s.manifest.files}


def check_checksums(s: CacheScan, t: TrustReport) -> Check:
    m = t.manifest
    if m is None:
        return Check("checksums", False, tuple(r.text for r in t.of("manifest") + t.of("files")),
                     tuple(f"{w.path}: {w.message}" for w in s.warnings if w.path != MANIFEST_NAME))
    check = t.files
    problems = [r.text for r in t.of("files")]
    reported = {p.path for p in check.problems}
    for rel, entry in sorted(m.entries.items()):
        rec = m.files.get(rel)
        if rec is not None and rec.sha256 != entry.sha256:
            problems.append(f"{rel}: manifest entry and file list disagree on its sha256")
    listed = set(m.files)
    problems += [f"{rel}: corrupt (Triton would fail on it)" for rel in s.corrupt
                 if rel not in listed and rel not in reported]
    problems += [f"{rel}: manifest entry without a file on disk" for rel in s.missing if rel not in listed]
    if check.moved_groups:
        problems.append(f"{count(len(check.moved_groups), 'compiled kernel')} list their files at another path "
                        "(the cache was moved or copied without `autotune-cache import`): the server recompiles them")
    notes = []
    unlisted = s.unlisted
    if unlisted:
        notes.append(f"{len(unlisted)} of the foreign files are autotune files (a server without the loader wrote its "
                     "misses here?); `prune` deletes them, or rebuild to list them")
    gone = [r for r in s.autotune if r.binaries and not s.binaries_of(r)]
    if gone:
        notes.append(f"{count(len(gone), 'entry', 'entries')} {'has' if len(gone) == 1 else 'have'} no compiled "
                     "winner on disk (pruned with --all-binaries?): the server compiles each winner once, "
                     "benchmarks nothing")
    unknown = [r for r in s.autotune if not r.binaries]
    if unknown:
        notes.append(f"{count(len(unknown), 'entry', 'entries')} {'does' if len(unknown) == 1 else 'do'} not record "
                     "their winners' binaries (older manifest)")
    ok_count = len(m.files) - sum(1 for p in problems if p.split(":", 1)[0] in m.files)
    foreign = len(check.of("foreign"))
    notes.insert(0, f"{ok_count} of {count(len(m.files), 'file')} listed in the manifest "
                    f"{'is' if ok_count == 1 else 'are'} intact; {count(foreign, 'foreign file')} "
                    f"({count(check.hashed, 'file')}, {size(check.bytes_hashed)} hashed in {check.seconds:.2f} s)")
    return Check("checksums", not problems, tuple(problems), tuple(notes))


def check_permissions(t: TrustReport) -> Check:
    """Who else can change what a server loads from this dir (integrity.shared_writable)."""
    if not t.shared_writable:
        return Check("permissions", True, notes=("only the owner (this user or root) can write the dir, its entries "
                                                 "and its parents",))
    if t.policy.allow_shared_writable:
        return Check("permissions", True, notes=tuple(map(writable_reason, t.shared_writable))
                     + ("allowed (--allow-writable)",))
    return Check("permissions", False, tuple(r.text for r in t.of("permissions")),
                 ("`chmod -R go-w` the dir and `chown` what another user owns (and fix the parents), or "
                  "--allow-writable; the loader refuses it the same way",))


def check_signature(t: TrustReport) -> Check:
    if t.signed:
        return Check("signature", True, notes=(f"manifest.sig: a valid ed25519 signature by key {t.key_id}",))
    return Check("signature", False, tuple(r.text for r in t.of("signature"))
                 or ("no manifest.json to check a signature of",))


# -- compatibility --------------------------------------------------------------------------------------------
def emulated_problem(fp, allowed: bool | None) -> str | None:
    """The one rule on emulated caches (`build --emulate`: a fake sm_90 GPU, fake timings): its entries hit, but its
    winners are arbitrary, so a check that says "ship it" (verify, ensure) fails it unless `allowed` (None: env
    AUTOTUNE_CACHE_ALLOW_EMULATED)."""
    from .. import settings
    if allowed is None:
        allowed = settings.current().allow_emulated
    if fp is None or not fp.emulated or allowed:
        return None
    return ("built with --emulate (a fake GPU, fake timings): every winner is arbitrary; rebuild on the serving GPU, "
            "or pass --allow-emulated (tests only)")


def check_compatibility(s: CacheScan, allow_emulated: bool | None = None) -> Check:
    supported = versions.support()
    if supported.refusal is not None:   # the fingerprint below cannot even be read with this Triton
        return Check("compatibility", False, (supported.refusal,))
    fp = s.manifest.fingerprint if s.manifest else None
    if fp is None:
        return Check("compatibility", False, ("no fingerprint in the manifest: cannot tell which Triton, ptxas "
                                              "and env vars the entries are keyed for",))
    problems, notes = fingerprint.misses_here(fp, query_gpu=True)
    if supported.warning:
        notes.insert(0, supported.warning)
    emulated = emulated_problem(fp, allow_emulated)
    if emulated:
        problems.append(emulated)
    elif fp.emulated:
        notes.append("the cache was built emulated (fake sm_90 GPU): its winners are arbitrary (allowed)")
    return Check("compatibility", not problems, tuple(problems), tuple(notes))


# -- coverage -------------------------------------------------------------------------------------------------
PRUNED = "pruned to one"   # a coverage row's status: reached by the build, one config left, no lookup (3.8+)


def check_coverage(s: CacheScan, plan, changed: dict[str, str] | None = None) -> Check:
    """Every planned (kernel, key) has an intact autotune file (parsable, and as the manifest recorded it), or the
    build found it pruned to one config, which Triton 3.8+ looks up nowhere (status PRUNED; see the module doc)."""
    changed = changed_files(s) if changed is None else changed
    pruned = {(p.kernel, tuple(p.key)) for u in (s.manifest.units.values() if s.manifest else ())
              for p in u.pruned_to_one}
    by_key: dict[tuple, list[AutotuneRecord]] = {}
    for r in s.autotune:
        by_key.setdefault((r.kernel, tuple(r.key)), []).append(r)
    rows, problems = [], []
    for unit, k in plan.reached_once():
        found = by_key.get((k.kernel, tuple(k.key)), [])
        intact = [r for r in found if r.file not in changed]
        status = ("present" if intact else "damaged" if found else
                  PRUNED if (k.kernel, tuple(k.key)) in pruned else "missing")
        fields = " ".join(f"{n}={v}" for n, v in k.fields.items())
        rows.append({"unit": unit.id, "tp": list(unit.tp), "kernel": k.kernel, "fields": k.fields,
                     "key": list(k.key), "status": status, "file": (intact or found)[0].file if found else None})
        if status not in ("present", PRUNED):
            problems.append(f"{status}: {k.kernel} {fields} (TP {','.join(map(str, unit.tp))}, reached at "
                            f"T={k.tokens})" + (f": {changed[found[0].file]}" if found else ""))
    present = sum(r["status"] == "present" for r in rows)
    one = sum(r["status"] == PRUNED for r in rows)
    spec = plan.spec
    notes = (f"{present} of {count(len(rows), 'key')} that {spec.model.name} at TP {','.join(map(str, spec.tp))} "
             f"(prefills up to {spec.max_tokens} tokens, targets {','.join(spec.targets)}) looks up are present"
             + (f"; {one} more pruned to one config in the build, which Triton looks up nowhere (3.8+): no file "
                "needed" if one else ""),)
    return Check("coverage", not problems, tuple(problems), notes, tuple(rows))


def verify(s: CacheScan, plan=None, *, allow_writable: bool = False, public_key=None,
           allow_emulated: bool | None = None) -> Verification:
    """Run the checks; coverage only when a plan is given, signature only with a public key; an emulated cache
    fails compatibility unless `allow_emulated` (None: env AUTOTUNE_CACHE_ALLOW_EMULATED)."""
    t = assess(s.root, Policy(require_manifest=True, allow_shared_writable=allow_writable, public_key=public_key))
    checks = [check_checksums(s, t), check_permissions(t), check_compatibility(s, allow_emulated)]
    if public_key is not None:
        checks.append(check_signature(t))
    if plan is not None:
        checks.append(check_coverage(s, plan, changed_files(s, t.files)))
    return Verification(cache_dir=s.root, checks=tuple(checks))
