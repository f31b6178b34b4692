"""inspect, verify, prune, export/import, merge on real caches of the toy kernel (real Triton compiles for a fake
sm_90 GPU, FACTS.md §2), and inspect/verify on the real H200 cache in tests/data."""
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import TESTS, compiles, run_cli, toy_build

from autotune_cache import BuildSpec, shapes
from autotune_cache.cache import manifest as manifest_mod
from autotune_cache.cache.layout import read_group
from autotune_cache.cache.scan import scan

TOKENS = ("--target", "toy_target", "--tokens", "1,1024,1025,2048,2049,3000", "--emulate")
H200 = TESTS / "data" / "h200-qwen3.5-9b-cache"


@pytest.fixture(scope="module")
def built(tmp_path_factory, toy_caches):
    """Three keys (NB 1..3), 3 configs each: 3 winners' and 6 losers' compiled dirs. Never modified by tests."""
    cache = toy_caches.copy(tmp_path_factory.mktemp("built") / "cache", tp=(1, 2))
    return cache, manifest_mod.load(cache)


def verified(cache, tp=(1,), max_tokens=None, targets=("toy_target",)):
    """verify in this process (the CLI's own output is tested in the verify tests): the checks that failed."""
    from autotune_cache.builder.plan import plan
    from autotune_cache.cache.verify import verify
    p = plan(BuildSpec(model=shapes.preset("qwen3.5-9b"), targets=targets, tp=tp, max_tokens=max_tokens)) \
        if max_tokens else None
    v = verify(scan(cache), p)
    return {c.name: c.problems for c in v.checks if not c.ok}, v


def copy_of(cache, dest):
    """A copy at another path: its group files still point at `cache` (as after a plain cp -r)."""
    shutil.copytree(cache, dest)
    return dest


def one_line_error(proc, text):
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


# -- the build records the winners' binaries ------------------------------------------------------------------
def test_build_records_each_winners_compiled_dir(built):
    cache, m = built
    for entry in m.entries.values():
        assert len(entry.binaries) == 1
        d = cache / entry.binaries[0]
        (group,) = d.glob("__grp__*.json")
        assert group.name == "__grp__toy_scale_kernel.json"
        assert all(Path(p).parent == d for p in read_group(group).values())
        meta = json.loads((d / "toy_scale_kernel.json").read_text())
        assert meta["num_warps"] == entry.winner["num_warps"]
    # one compiled dir per benchmarked config: 9, of which 3 are the winners'
    s = scan(cache)
    assert len(s.compiled) == 9 and sum(c.role == "winner" for c in s.compiled) == 3


# -- inspect --------------------------------------------------------------------------------------------------
def test_inspect_table(built):
    cache, _ = built
    text = run_cli("inspect", cache, check=0).stdout
    assert "toy_scale_kernel" in text and "D=128 NB=2 | bf16x2" in text and "BLOCK=" in text
    assert "totals: 3 entries, 1 kernel;" in text
    assert "winners' binaries" in text and "(3 dirs)" in text and "(6 dirs)" in text
    assert "EMULATED" in text and "0 autotune files on disk not in the manifest" in text


def test_inspect_json(built):
    cache, m = built
    data = json.loads(run_cli("inspect", cache, "--json", check=0).stdout)
    assert sorted(e["fields"]["NB"] for e in data["entries"]) == [1, 2, 3]
    assert all(e["fields"] == {"D": 128, "NB": e["key"][1]} and e["dtypes"] == ["torch.bfloat16"] * 2
               and e["configs"] == 3 and e["in_manifest"] and len(e["binaries"]) == 1 for e in data["entries"])
    t = data["totals"]
    assert t["entries"] == 3 and t["kernels"] == 1 and t["compiled_dirs"] == {"winner": 3, "loser": 6, "unknown": 0,
                                                                              "untuned": 0}
    assert t["winner_binaries_bytes"] > 0 and t["loser_binaries_bytes"] > t["winner_binaries_bytes"]
    assert data["fingerprint"]["emulated"] and data["manifest"]["digest"] == m.digest()
    assert data["unlisted"] == data["missing"] == data["warnings"] == []


def test_inspect_plain_triton_dir_without_manifest(built, tmp_path):
    cache = copy_of(built[0], tmp_path / "plain")
    (cache / "manifest.json").unlink()
    text = run_cli("inspect", cache, check=0).stdout
    assert "manifest: none" in text and "unknown (no manifest)" in text and "totals: 3 entries" in text
    data = json.loads(run_cli("inspect", cache, "--json", check=0).stdout)
    assert data["manifest"] is None and data["totals"]["compiled_dirs"]["unknown"] == 9
    assert all(e["fields"] is None for e in data["entries"])   # no manifest: the toy target is not known
    assert data["entries"][0]["key"][:2] == [128, 1]


def test_corrupt_and_truncated_files_are_warnings_not_crashes(built, tmp_path):
    cache = copy_of(built[0], tmp_path / "damaged")
    files = sorted(built[1].entries)
    truncated, garbage = cache / files[0], cache / files[1]
    truncated.write_bytes(truncated.read_bytes()[:40])
    garbage.write_bytes(b"\x00\xff not json")
    group = next(cache.glob("*/__grp__*.json"))
    group.write_text('{"child_paths": ')
    (cache / "lone.bin").write_bytes(b"x")
    proc = run_cli("inspect", cache, check=0)
    assert "Traceback" not in proc.stderr
    for f in (files[0], files[1], group.relative_to(cache).as_posix()):
        assert f in proc.stdout
    assert "totals: 1 entry," in proc.stdout
    data = json.loads(run_cli("inspect", cache, "--json", check=0).stdout)
    assert set(data["corrupt"]) == {files[0], files[1], group.relative_to(cache).as_posix()}
    assert {w["path"] for w in data["warnings"]} >= set(data["corrupt"])
    proc = run_cli("verify", cache)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert files[0] in proc.stdout and "verify failed" in proc.stdout


def test_corrupt_manifest_is_a_warning(built, tmp_path):
    cache = copy_of(built[0], tmp_path / "badmanifest")
    (cache / "manifest.json").write_text("{broken")
    proc = run_cli("inspect", cache, check=1)   # the rest is shown, and the exit says the manifest is unusable
    assert "manifest unreadable: corrupt manifest" in proc.stdout and "totals: 3 entries" in proc.stdout
    proc = run_cli("verify", cache, "--json")
    assert proc.returncode == 1 and not json.loads(proc.stdout)["checks"]["checksums"]["ok"]


def test_inspect_missing_dir_is_exit_2(tmp_path):
    one_line_error(run_cli("inspect", tmp_path / "nope"), "no such cache directory")


# -- verify ---------------------------------------------------------------------------------------------------
def test_verify_passes_with_coverage(built):
    cache, _ = built
    args = ("verify", cache, "--model", "qwen3.5-9b", "--tp", "1,2", "--target", "toy_target", "--max-tokens", "3000")
    text = run_cli(*args, check=0).stdout
    assert "checksums: OK" in text and "compatibility: OK" in text and "coverage: OK" in text
    assert "3 of 3 keys" in text and "compute capability not checked" in text
    data = json.loads(run_cli(*args, "--json", check=0).stdout)
    assert data["ok"] and [r["status"] for r in data["checks"]["coverage"]["details"]] == ["present"] * 3


def test_verify_without_plan_checks_checksums_and_compatibility(built):
    text = run_cli("verify", built[0], check=0).stdout
    assert "coverage: not checked" in text and "all checks passed" in text


def test_verify_fails_on_uncovered_keys_changed_files_and_a_moved_cache(built, tmp_path):
    cache, m = built
    proc = run_cli("verify", cache, "--target", "toy_target", "--model", "qwen3.5-9b", "--max-tokens", "5000", "--json")
    assert proc.returncode == 1
    cov = json.loads(proc.stdout)["checks"]["coverage"]
    assert [r["fields"]["NB"] for r in cov["details"] if r["status"] == "missing"] == [5, 4]
    moved = copy_of(cache, tmp_path / "moved")
    cubin = next(moved.glob("*/*.cubin"))
    cubin.write_bytes(cubin.read_bytes() + b"\0")
    proc = run_cli("verify", moved)
    assert proc.returncode == 1
    assert f"{cubin.relative_to(moved).as_posix()}: size" in proc.stdout
    assert "9 compiled kernels list their files at another path" in proc.stdout


# -- prune ----------------------------------------------------------------------------------------------------
def test_prune_deletes_losers_and_stale_entries_and_still_hits_with_zero_compiles(tmp_path):
    cache = tmp_path / "cache"
    # TP 2 (8 heads) at T=1001: the kernel's n = 8008 is not a multiple of 16, so Triton compiles a second variant
    # of the NB=1 winner (an in-memory hit of the key after T=1024): both must be recorded and kept
    m = toy_build(cache, tp=(2,), max_tokens=2048, tokens=(1001,))
    assert sorted(len(e.binaries) for e in m.entries.values()) == [1, 2]
    # stale things: an autotune file the manifest does not list, and a Triton temp dir of an interrupted write
    stale = cache / "STALEDIR" / "toy_scale_kernel.autotune.json"
    stale.parent.mkdir()
    shutil.copy(cache / next(iter(m.entries)), stale)
    (cache / next(iter(m.entries))).parent.joinpath("tmp.pid_1_x").mkdir()
    before = scan(cache)
    assert len(before.compiled) == 7 and len(before.unlisted) == 1

    dry = json.loads(run_cli("prune", cache, "--dry-run", "--json", check=0).stdout)
    assert dry["dry_run"] and dry["bytes_freed"] == before.totals["loser_binaries_bytes"] + stale.stat().st_size
    assert len(dry["deletions"]) == 4 + 1 + 1 and stale.exists()    # 4 losers, the stale file, the temp dir

    text = run_cli("prune", cache, check=0).stdout
    assert "freed" in text and "losing config" in text
    after = scan(cache)
    assert {c.role for c in after.compiled} == {"winner"} and len(after.compiled) == 3
    assert not stale.exists() and after.warnings == () and after.unlisted == []
    assert after.totals["bytes"] < before.totals["bytes"]
    assert set(manifest_mod.load(cache).files) == {p.relative_to(cache).as_posix() for p in cache.rglob("*")
                                                  if p.is_file() and p.name not in manifest_mod.OWN_FILES}
    assert verified(cache, tp=(2,), max_tokens=2048)[0] == {}
    report = compiles(cache, "--target", "toy_target", "--tp", "2", "--tokens", "1001,1024,2048", "--emulate")
    assert report["hits"] == 2 and report["benchmarks"] == 0 and report["compiles"] == 0 and report["loaded"] == 3
    again = json.loads(run_cli("prune", cache, "--json", check=0).stdout)
    assert again["bytes_freed"] == 0


def test_prune_all_binaries_keeps_only_autotune_json(built, tmp_path):
    cache = copy_of(built[0], tmp_path / "c")
    data = json.loads(run_cli("prune", cache, "--all-binaries", "--json", check=0).stdout)
    assert len(data["deletions"]) == 9
    left = {p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()}
    assert left - {"manifest.json", ".autotune-cache.lock"} == set(built[1].entries)
    failed, v = verified(cache)
    assert failed == {} and any("3 entries have no compiled winner on disk" in n for n in v.checks[0].notes)
    assert "pruned" in run_cli("inspect", cache, check=0).stdout


def test_prune_without_manifest_is_exit_2(built, tmp_path):
    cache = copy_of(built[0], tmp_path / "plain")
    (cache / "manifest.json").unlink()
    one_line_error(run_cli("prune", cache), "prune needs the build's manifest")


# -- export / import ------------------------------------------------------------------------------------------
def test_export_import_relocates_with_zero_compiles(built, tmp_path):
    cache, m = built
    bundle = tmp_path / "b.tar.gz"
    text = run_cli("export", cache, bundle, check=0).stdout
    assert "exported" in text and bundle.is_file()
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        info = json.load(tar.extractfile("bundle.json"))
    assert names[:2] == ["bundle.json", "manifest.json"] and info["manifest_digest"] == m.digest()

    moved = tmp_path / "elsewhere" / "cache"
    data = json.loads(run_cli("import", bundle, moved, "--json", check=0).stdout)
    assert data["groups_rewritten"] == 9 and data["manifest_digest"] == m.digest()
    assert all(Path(p).parent.parent == moved for g in moved.glob("*/__grp__*.json") for p in read_group(g).values())
    assert verified(moved, tp=(1, 2), max_tokens=3000)[0] == {}
    report = compiles(moved, *TOKENS)
    assert report["hits"] == 3 and report["benchmarks"] == 0 and report["compiles"] == 0 and report["loaded"] == 3

    # the same cache moved without import: autotune JSON still hits, but every winner recompiles
    renamed = tmp_path / "renamed"
    moved.rename(renamed)
    report = compiles(renamed, *TOKENS)
    assert report["hits"] == 3 and report["benchmarks"] == 0 and report["compiles"] == 3


def test_export_json_and_import_plain(built, tmp_path):
    bundle = tmp_path / "b.tgz"
    data = json.loads(run_cli("export", built[0], bundle, "--json", check=0).stdout)
    assert data["files"] == len(built[1].files) and data["bundle_bytes"] == bundle.stat().st_size
    text = run_cli("import", bundle, tmp_path / "dst", check=0).stdout
    assert "imported" in text and "TRITON_CACHE_DIR=" in text


def _bundle(path, members, info=None, manifest=b"{}"):
    """A hand-made bundle: members = [(TarInfo, bytes or None)]."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("bundle.json", json.dumps(info or {}).encode()), ("manifest.json", manifest)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
        for ti, data in members:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def _member(name, data=b"x", kind=tarfile.REGTYPE, link=""):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, link
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    return ti, data if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize("member,msg", [
    (_member("../escape.json"), "leaves the cache dir"),
    (_member("/abs/path.json"), "absolute"),
    (_member("AB/../../x"), "leaves the cache dir"),
    (_member("AB/link", kind=tarfile.SYMTYPE, link="/etc/passwd"), "is a link"),
    (_member("AB/hard", kind=tarfile.LNKTYPE, link="manifest.json"), "is a link"),
    (_member("AB/dev", kind=tarfile.CHRTYPE), "special file"),
])
def test_import_rejects_unsafe_bundles(tmp_path, member, msg):
    bundle = _bundle(tmp_path / "evil.tar.gz", [member])
    dst = tmp_path / "dst"
    one_line_error(run_cli("import", bundle, dst), msg)
    assert not dst.exists() and not (tmp_path / "escape.json").exists()


def test_import_rejects_tampered_or_foreign_bundles(built, tmp_path):
    cache, m = built
    bundle = tmp_path / "b.tar.gz"
    run_cli("export", cache, bundle, check=0)
    # a manifest edited after export: its digest no longer matches bundle.json
    tampered = tmp_path / "t.tar.gz"
    with tarfile.open(bundle) as src, tarfile.open(tampered, "w:gz") as dst:
        for ti in src.getmembers():
            data = src.extractfile(ti).read()
            if ti.name == "manifest.json":
                data = data.replace(b'"emulated": true', b'"emulated": false')
                ti.size = len(data)
            dst.addfile(ti, io.BytesIO(data))
    one_line_error(run_cli("import", tampered, tmp_path / "d1"), "does not match the digest")
    one_line_error(run_cli("import", _bundle(tmp_path / "x.tgz", []), tmp_path / "d2"), "not an autotune-cache bundle")
    (tmp_path / "junk.tgz").write_bytes(b"not a tarball")
    one_line_error(run_cli("import", tmp_path / "junk.tgz", tmp_path / "d3"), "not a readable bundle")
    one_line_error(run_cli("import", bundle, cache), "is not empty")
    assert not any((tmp_path / d).exists() for d in ("d1", "d2", "d3"))


# -- merge ----------------------------------------------------------------------------------------------------
def test_merge_combines_caches_and_hits_with_zero_compiles(built, tmp_path):
    small = tmp_path / "small"
    small_m = toy_build(small, tp=(1,), max_tokens=1024)   # NB=1 only, the same disk key as one of `built`'s
    (nb1,) = small_m.entries
    into = tmp_path / "merged"
    data = json.loads(run_cli("merge", small, built[0], "--into", into, "--json", check=0).stdout)
    # the fake timings of NB=1 differ between the two builds: same disk key, other content -> the first is kept
    assert [c.split(":")[0] for c in data["conflicts"]] == [nb1]
    assert data["entries"] == 3 and data["skipped"] > 0
    m = manifest_mod.load(into)
    assert set(m.entries) == set(built[1].entries) and len(m.units) == 3
    assert m.entries[nb1].sha256 == small_m.entries[nb1].sha256
    assert all(Path(p).parent.parent == into for g in into.glob("*/__grp__*.json") for p in read_group(g).values())
    assert verified(into, tp=(1, 2), max_tokens=3000)[0] == {}
    report = compiles(into, *TOKENS)
    assert report["benchmarks"] == 0 and report["compiles"] == 0 and report["loaded"] == 3
    text = run_cli("merge", small, "--into", into, "--dry-run", check=0).stdout
    assert "every file is there already" in text and "nothing changed" in text   # a no-op merge


def test_merge_refuses_a_conflicting_fingerprint(built, tmp_path):
    other = copy_of(built[0], tmp_path / "other")
    m = manifest_mod.load(other)
    m.fingerprint = m.fingerprint.model_copy(update={"env": {"TRITON_DEFAULT_FP_FUSION": "0"}})
    manifest_mod.save(m, other)
    into = tmp_path / "into"
    one_line_error(run_cli("merge", built[0], other, "--into", into), "built for another environment")
    assert "TRITON_DEFAULT_FP_FUSION" in run_cli("merge", built[0], other, "--into", into).stderr
    assert not (into / "manifest.json").exists()


def test_merge_refuses_a_source_file_changed_after_its_check(built, tmp_path):
    from autotune_cache.cache.merge import plan_merge
    from autotune_cache.errors import CacheDirError
    src = copy_of(built[0], tmp_path / "src")
    into = tmp_path / "into"
    plan = plan_merge([src], into)
    victim, rel = next((s, r) for s, r in plan.copies if not r.endswith(".json"))
    victim.write_bytes(victim.read_bytes() + b"tampered")   # between the check (plan) and the copy (execute)
    with pytest.raises(CacheDirError, match="changed since merge checked it"):
        plan.execute()
    assert not (into / "manifest.json").exists() and not (into / rel).exists()
    assert not [p for p in into.rglob("*") if p.is_file() and p.name != ".autotune-cache.lock"]


# -- the real H200 cache (tests/data) ---------------------------------------------------------------------------
def test_h200_cache_inspect():
    text = run_cli("inspect", H200, check=0).stdout
    assert "NVIDIA H200" in text and "totals: 14 entries, 6 kernels" in text
    assert "D=128 NB=4 | bf16x2,fp32" in text and "H=8 HV=16 K=128 BC=16" in text
    data = json.loads(run_cli("inspect", H200, "--json", check=0).stdout)
    assert data["fingerprint"]["gpu_name"] == "NVIDIA H200" and not data["fingerprint"]["emulated"]
    assert all(e["fields"] is not None for e in data["entries"]) and data["warnings"] == []
    assert sum(e["configs"] for e in data["entries"]) == 4 * 25 + 2 * (4 + 6 + 9 + 12 + 3)


def test_h200_cache_verify_checksums_and_coverage():
    proc = run_cli("verify", H200, "--model", "qwen3.5-9b", "--tp", "1,2", "--json")
    checks = json.loads(proc.stdout)["checks"]
    assert checks["checksums"]["ok"] and checks["coverage"]["ok"]
    assert [r["status"] for r in checks["coverage"]["details"]] == ["present"] * 14
    # built with Python 3.12's Triton wheel: on another Python every disk key differs, and verify says so
    assert proc.returncode == (0 if checks["compatibility"]["ok"] else 1)
    if sys.version_info[:2] != (3, 12):
        assert any("python" in p for p in checks["compatibility"]["problems"])
    failed, _ = verified(H200, tp=(4,), max_tokens=16384, targets=("fla",))
    # TP 4 was not built: every key but l2norm NB=1 (shared by every TP degree) is missing
    assert len(failed["coverage"]) == 5 and not any("l2norm" in p for p in failed["coverage"])


def test_key_fields_are_named_by_the_target_whose_key_fits(tmp_path):
    # vLLM's vendored chunk_fwd_kernel_o has other key fields than upstream FLA's kernel of the same name
    from autotune_cache.targets import get
    shape = shapes.preset("qwen3.5-9b").per_rank(1)
    for i, name in enumerate(("fla", "vllm")):
        target = get(name)
        spec = next(k for k in target.kernels if k.name == "chunk_fwd_kernel_o")
        key = spec.key(shape, 64, target.default_dtypes(shape))
        d = tmp_path / f"HASH{i}"
        d.mkdir()
        (d / "chunk_fwd_kernel_o.autotune.json").write_text(json.dumps(
            {"key": list(key), "configs_timings": [[{"kwargs": {}, "num_warps": 4}, [0.1, 0.1, 0.1]]]}))
    fields = [r.fields for r in scan(tmp_path).autotune]
    assert sorted(map(sorted, fields)) == sorted([["BT", "H", "HV", "K", "STATE_V_FIRST", "V"], ["BT", "H", "K", "V"]])
