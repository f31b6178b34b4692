"""Property-based fuzzing of the two ways a cache arrives from elsewhere: manifest.json read by manifest.load, and a
bundle unpacked by import_bundle. Whatever they hold, nothing raises but CacheDirError/BundleError, and nothing is
created outside the temp dir the test gives them."""
import io
import json
import tarfile
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from helpers import examples, listing, raw_digest  # noqa: E402
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from autotune_cache.cache import manifest as manifest_mod  # noqa: E402
from autotune_cache.cache.bundle import import_bundle  # noqa: E402
from autotune_cache.cache.files import path_problem, sha256_bytes  # noqa: E402
from autotune_cache.errors import BundleError, CacheDirError  # noqa: E402

FUZZ = settings(max_examples=examples(600), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RAN = {"manifest": 0, "bundle": 0}

# Path-like names: mostly plausible cache names, with the pieces that make one dangerous or ambiguous.
PIECES = st.sampled_from(["AB", "CD", "k.cubin", "__grp__k.json", "k.autotune.json", "..", ".", "", "/", "\\",
                          "\x00", "\n", "é", "a:b", "manifest.json", ".autotune-cache.lock", "x" * 300, "tmp.pid_1"])
NAMES = st.one_of(st.lists(PIECES, min_size=1, max_size=4).map("/".join), st.text(max_size=12),
                  st.sampled_from(["../x", "/etc/passwd", "AB/../../x", "AB//k", "./AB/k", "AB/k/"]))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=20)
RECORDS = st.one_of(st.fixed_dictionaries({"size": st.integers(-2, 10 ** 20), "sha256": st.text(max_size=64)}),
                    JSON)


@st.composite
def manifests(draw):
    """JSON data shaped like a manifest (schema 1, files, entries, units), with any field possibly wrong."""
    raw = {"schema_version": draw(st.sampled_from([1, 1, 1, 2, "1", None])), "tool_version": draw(JSON),
           "files": draw(st.dictionaries(NAMES, RECORDS, max_size=5))}
    if draw(st.booleans()):
        raw["entries"] = draw(st.dictionaries(NAMES, st.fixed_dictionaries(
            {"kernel": st.text(max_size=4), "key": st.lists(JSON, max_size=3), "file": NAMES,
             "sha256": st.text(max_size=4), "size": st.integers(), "configs": st.integers(), "winner": JSON,
             "best": st.floats(), "binaries": st.lists(NAMES, max_size=2)}), max_size=3))
    if draw(st.booleans()):
        raw["units"] = draw(st.dictionaries(st.text(max_size=4), st.fixed_dictionaries(
            {"id": st.text(max_size=4), "target": st.text(max_size=4), "tp": st.lists(st.integers(), max_size=2),
             "shape": JSON, "dtypes": st.dictionaries(st.text(max_size=3), st.text(max_size=3)),
             "tokens": st.lists(st.integers(), max_size=2), "entries": st.lists(NAMES, max_size=3)}), max_size=2))
    if draw(st.booleans()):
        raw.update(draw(st.dictionaries(st.text(max_size=8), JSON, max_size=3)))
    return raw


MANIFEST_BYTES = st.one_of(manifests().map(lambda raw: json.dumps(raw).encode()), st.binary(max_size=200),
                           JSON.map(lambda v: json.dumps(v).encode()),
                           st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
                           st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"0" + b"}" * n))


def _assert_paths_contained(m) -> None:
    paths = [*m.files, *m.entries, *(e.file for e in m.entries.values()),
             *(b for e in m.entries.values() for b in e.binaries), *(f for u in m.units.values() for f in u.entries)]
    assert all(path_problem(p) is None for p in paths), paths


@FUZZ
@given(data=MANIFEST_BYTES)
def test_fuzz_manifest_load(data):
    RAN["manifest"] += 1
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / manifest_mod.MANIFEST_NAME).write_bytes(data)
        try:
            m = manifest_mod.load(d)
        except CacheDirError as e:
            assert "\n" not in str(e)
            event("refused")
            return
        event("loaded")
        _assert_paths_contained(m)
        assert manifest_mod.parse(m.model_dump_json().encode(), "again") == m   # what loads can be saved


# -- bundles ----------------------------------------------------------------------------------------------------
KINDS = st.sampled_from([tarfile.REGTYPE] * 6 + [tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                                                 tarfile.FIFOTYPE, tarfile.CONTTYPE, b"x"])
GOOD = ["AB/k.cubin", "AB/k.autotune.json", "CD/k.so"]


@st.composite
def bundles(draw):
    """(manifest JSON data, bundle.json data, members [(name, kind, bytes)]): a good bundle's parts, then changed."""
    files = {rel: draw(st.binary(max_size=40)) for rel in draw(st.lists(st.sampled_from(GOOD), unique=True))}
    raw = json.loads(manifest_mod.Manifest(tool_version="0", files={
        rel: {"size": len(b), "sha256": sha256_bytes(b)} for rel, b in files.items()}).model_dump_json())
    if draw(st.booleans()):   # a manifest an attacker wrote: other paths, sizes, shapes
        raw["files"].update(draw(st.dictionaries(NAMES, RECORDS, max_size=3)))
    members = [(rel, tarfile.REGTYPE, b) for rel, b in files.items()]
    members += draw(st.lists(st.tuples(NAMES | st.sampled_from(GOOD + ["manifest.sig", "manifest.json", "AB"]),
                                       KINDS, st.binary(max_size=40)), max_size=4))
    members = draw(st.permutations(members))
    info = {"format": "autotune-cache-bundle", "version": 1, "manifest_digest": raw_digest(raw)}
    if draw(st.integers(0, 5)) == 0:
        info = draw(JSON)
    head = [("bundle.json", tarfile.REGTYPE, json.dumps(info).encode()),
            ("manifest.json", tarfile.REGTYPE, json.dumps(raw).encode())]
    if draw(st.integers(0, 5)) == 0:
        head = draw(st.permutations(head))[:draw(st.integers(0, 2))]
    return head + members


def _write_tar(path, members):
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in members:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            regular = kind in (tarfile.REGTYPE, tarfile.CONTTYPE)
            ti.size = len(data) if regular else 0
            ti.linkname = "../../outside" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            ti.mode = 0o755
            tar.addfile(ti, io.BytesIO(data) if regular else None)


@FUZZ
@given(members=bundles())
def test_fuzz_import_bundle(members):
    RAN["bundle"] += 1
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "outside").write_bytes(b"keep")
        bundle = root / "b.tgz"
        _write_tar(bundle, members)
        before = listing(root)
        target = root / "deep" / "dst"
        try:
            report = import_bundle(bundle, target)
        except (BundleError, CacheDirError) as e:
            assert "\n" not in str(e)
            event("refused")
            assert listing(root) == before   # no target dir left, nothing outside it
            return
        event("imported")
        after = {k: v for k, v in listing(root).items() if not k.startswith("deep")}
        assert after == before and (root / "outside").read_bytes() == b"keep"
        m = manifest_mod.load(target)
        inside = {k for k, v in listing(target).items() if v >= 0}
        assert inside <= {*m.files, manifest_mod.MANIFEST_NAME, manifest_mod.SIG_NAME, manifest_mod.LOCK_NAME}
        assert report.files == len(m.files)


def test_fuzz_example_counts():
    """Runs after the two fuzz tests (file order): says how many examples each ran (-s shows it)."""
    print(f"\nfuzz examples run: manifest.load {RAN['manifest']}, import_bundle {RAN['bundle']}")
