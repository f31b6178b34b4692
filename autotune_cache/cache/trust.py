"""Will a server trust this cache dir? The one decision: install() (serve/loader.py) acts on it, `verify` and `ensure`
report it, so the three cannot disagree.

A cache is code the server runs (cubins, Triton's launcher .so). assess() reads the manifest, checks every file
against it and the owners and modes of the dir, its entries and its parents (integrity.py), and the manifest's
signature (signing.py) when a public key is given. Each problem under the Policy is a Refusal: one is enough for the
dir not to be used. What does not stop the server from using the dir (no manifest when none is required, kernels
whose group files point elsewhere) is a warning. Whether the entries will *hit* here (fingerprint, coverage) is not
trust: that is fingerprint.py's and verify's.

Whatever the dir holds, assess() returns, and soon: manifest.json that is not a plain file, is too large, not UTF-8
or nested past the recursion limit is a refusal, and so is any exception a check did not expect (with a one-line
reason: the server that asked must start, and a dir that could not be checked is not used).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import settings
from ..errors import AutotuneCacheError, CacheDirError, exception_line
from . import integrity, signing
from . import manifest as manifest_mod
from .files import MAX_JSON_BYTES, NotPlainFile, open_plain
from .integrity import FileCheck, Writable
from .manifest import Manifest

# What a refusal is about; verify shows each under its own check.
CHECKS = ("manifest", "files", "permissions", "signature")


@dataclass(frozen=True)
class Policy:
    """What a caller requires of a cache dir. Example: Policy(require_manifest=True, public_key="/etc/ac/key.pub.pem").
    `public_key`: an ed25519 public key (PEM path, text or bytes): manifest.sig must be a valid signature by it."""
    require_manifest: bool = False
    allow_shared_writable: bool = False
    public_key: str | os.PathLike | bytes | None = None

    @property
    def needs_manifest(self) -> bool:
        # a key vouches for a manifest: a dir without one has nothing signed, whatever require_manifest says
        return self.require_manifest or self.public_key is not None


def policy_from_env(*, require_manifest: bool | None = None, allow_shared_writable: bool | None = None,
                    public_key: str | os.PathLike | bytes | None = None) -> Policy:
    """A Policy from arguments, each None falling back to its env var (AUTOTUNE_CACHE_REQUIRE_MANIFEST,
    AUTOTUNE_CACHE_ALLOW_WRITABLE, AUTOTUNE_CACHE_PUBLIC_KEY): what a server and its init container share."""
    env = settings.current()
    return Policy(
        require_manifest=env.require_manifest if require_manifest is None else require_manifest,
        allow_shared_writable=env.allow_writable if allow_shared_writable is None else allow_shared_writable,
        public_key=public_key or env.public_key)


@dataclass(frozen=True)
class Refusal:
    """One reason not to load the dir. Example: Refusal("files", "KX3.../k.cubin: sha256 differs from the manifest",
    ("KX3.../k.cubin",))."""
    check: str                 # one of CHECKS
    text: str                  # what every caller shows, word for word
    paths: tuple[str, ...]     # what it names: relative inside the dir, absolute for the dir and its parents

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class TrustReport:
    """The decision on one dir at one moment, and what it was made from."""
    root: Path
    policy: Policy
    manifest: Manifest | None
    manifest_error: str | None              # why manifest.json could not be read (then manifest is None)
    files: FileCheck
    shared_writable: tuple[Writable, ...]   # found, whether the policy allows them or not
    signed: bool | None                     # manifest.sig checked and valid; None: no public key
    key_id: str | None                      # the key of a valid signature
    refusals: tuple[Refusal, ...]
    warnings: tuple[str, ...]

    @property
    def trusted(self) -> bool:
        return not self.refusals

    @property
    def verified(self) -> bool:
        """Trusted, and a manifest vouched for every file (not only: nothing was found wrong)."""
        return self.trusted and self.manifest is not None

    def of(self, check: str) -> tuple[Refusal, ...]:
        return tuple(r for r in self.refusals if r.check == check)

    def summary(self, limit: int = 10) -> str:
        """'a: why; b: why; and 3 more': the first `limit` refusals."""
        texts = [r.text for r in self.refusals]
        return "; ".join(texts[:limit]) + (f"; and {len(texts) - limit} more" if len(texts) > limit else "")


def writable_reason(w: Writable) -> str:
    return (f"{w}: other users can change what the server loads ({w.fix}, or allow it explicitly: "
            "allow_shared_writable=True / AUTOTUNE_CACHE_ALLOW_WRITABLE=1 / --allow-writable)")


def _unchecked(root: Path, policy: Policy, e: BaseException) -> TrustReport:
    """The report on a dir whose check failed with an exception nobody expected: refused, naming it in one line."""
    files = FileCheck(root=root, listed=0, hashed=0, bytes_hashed=0, problems=(), writable=(), moved_groups=(),
                      seconds=0.0)
    return TrustReport(root=root, policy=policy, manifest=None, manifest_error=None, files=files, shared_writable=(),
                       signed=False if policy.public_key is not None else None, key_id=None,
                       refusals=(Refusal("files", f"{root}: cannot be checked ({exception_line(e)})", (str(root),)),),
                       warnings=())


def _load_manifest(root: Path):
    """manifest.load(root), never raising: (manifest or None, why it is unusable or None). What is there is opened
    as a plain file first (a fifo would block the read forever, a sparse file of terabytes fill memory); only a
    plain file of bounded size is handed to manifest.load. (Swapping it in between takes write access to the dir,
    which is refused unless allowed; manifest.load's own checks close that too.)"""
    path = manifest_mod.path_of(root)
    try:
        open_plain(path, MAX_JSON_BYTES).close()
    except FileNotFoundError:
        return None, None
    except NotPlainFile as e:
        return None, f"{path}: {e}"
    except OSError as e:
        return None, f"{path}: cannot read ({e.strerror or e})"
    try:
        return manifest_mod.load(root), None
    except CacheDirError as e:   # damaged or edited: nothing to check the files against
        return None, str(e)
    except Exception as e:   # e.g. not UTF-8, nested past the recursion limit
        return None, f"{path}: unreadable manifest ({exception_line(e)})"


def assess(cache_dir: str | os.PathLike, policy: Policy = Policy(), *, copy_to: Path | None = None) -> TrustReport:
    """Decide whether a server may load `cache_dir` (see the module doc). Never raises for a problem of the dir:
    each is a Refusal. `copy_to`: an empty private dir the same pass copies the listed files into
    (integrity.check_files; FileCheck.copy)."""
    root = Path(cache_dir).resolve()
    try:
        return _assess(root, policy, copy_to)
    except Exception as e:   # a check's own failure on a dir nobody foresaw: the dir is not used, the caller goes on
        return _unchecked(root, policy, e)


def _assess(root: Path, policy: Policy, copy_to: Path | None) -> TrustReport:
    refusals: list[Refusal] = []
    warnings: list[str] = []
    manifest, error = _load_manifest(root)
    if error is not None:
        refusals.append(Refusal("manifest", f"{error}: the files cannot be checked", (manifest_mod.MANIFEST_NAME,)))
    if manifest is None and error is None:
        if policy.needs_manifest:
            refusals.append(Refusal("manifest", f"{manifest_mod.path_of(root)}: no manifest, and one is required (a "
                                    "strict server, AUTOTUNE_CACHE_REQUIRE_MANIFEST=1, a public key, verify or "
                                    "ensure): the files cannot be checked", (manifest_mod.MANIFEST_NAME,)))
        else:
            warnings.append("no manifest.json: not built by autotune-cache; files and compatibility unchecked")
    files = integrity.check_files(root, manifest, copy_to)
    refusals += [Refusal("files", str(p), (p.path,)) for p in files.problems]
    unsafe = tuple(integrity.shared_writable(files))
    if not policy.allow_shared_writable:
        refusals += [Refusal("permissions", writable_reason(w), (w.path,)) for w in unsafe]
    signed = key_id = None
    if policy.public_key is not None:
        signed = False   # without a manifest, the manifest's refusal says why
        if manifest is not None:
            try:   # the groups as hashed, when all matched: nothing is read twice
                key_id, signed = signing.check(root, manifest, policy.public_key,
                                               groups=dict(files.groups) if files.ok else None), True
            except AutotuneCacheError as e:   # IntegrityError, or a key / package that cannot check it
                refusals.append(Refusal("signature", str(e), tuple(getattr(e, "files", ()))))
            except Exception as e:   # a key or signature file nobody foresaw
                refusals.append(Refusal("signature",
                                        f"{manifest_mod.SIG_NAME}: cannot be checked ({exception_line(e)})",
                                        (manifest_mod.SIG_NAME,)))
    if files.moved_groups:
        warnings.append(f"{len(files.moved_groups)} compiled kernels list their files outside their directory "
                        "(copied without `autotune-cache import`): those files are not loaded, the server compiles "
                        f"these kernels (first: {files.moved_groups[0]})")
    return TrustReport(root=root, policy=policy, manifest=manifest, manifest_error=error, files=files,
                       shared_writable=unsafe, signed=signed, key_id=key_id, refusals=tuple(refusals),
                       warnings=tuple(warnings))
