"""The build pipeline end to end on the toy kernel: real child process, real Triton compiles for a fake sm_90
GPU (FACTS.md §2), real autotune disk cache, real manifest; then a fresh process hits every entry."""
import json

import pytest
from helpers import run_cli, stand_in, toy_spec

from autotune_cache import build
from autotune_cache.cache import manifest as manifest_mod
from autotune_cache.cache.files import sha256_file
from autotune_cache.cache.layout import read_autotune
from autotune_cache.errors import CacheDirError


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, build(toy_spec(cache, tp=(1, 2)), progress=False)


def test_build_writes_entries_and_manifest(built):
    cache, m = built
    assert manifest_mod.load(cache) == m
    assert {u.status for u in m.units.values()} == {"done"}
    assert m.fingerprint.emulated and m.fingerprint.capability == "9.0" and m.fingerprint.triton
    # NB buckets 1, 2, 3 of the toy key: three autotune files, each tuned once
    assert sorted(e.key[1] for e in m.entries.values()) == [1, 2, 3]
    for name, entry in m.entries.items():
        path = cache / name
        assert sha256_file(path) == entry.sha256 and path.stat().st_size == entry.size
        parsed = read_autotune(path)
        assert list(parsed.key) == entry.key and parsed.winner == entry.winner and entry.configs == 3
    # the second TP degree reached the same keys: found on disk, not tuned again
    u1, u2 = m.units.values()
    assert (u1.hits, u2.hits) == (0, 3) and set(u1.entries) == set(u2.entries)
    assert all(e.units == [u1.id, u2.id] for e in m.entries.values())


def test_manifest_lists_every_cache_file_with_its_hash(built):
    cache, m = built
    on_disk = {p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()}
    assert set(m.files) == on_disk - {"manifest.json", ".autotune-cache.lock"}
    assert any(f.endswith(".cubin") for f in m.files) and any(f.endswith(".autotune.json") for f in m.files)
    for rel, rec in m.files.items():
        assert sha256_file(cache / rel) == rec.sha256


def test_fresh_process_hits_every_entry_with_zero_benchmarks(built):
    cache, _ = built
    report = stand_in(cache, "--target", "toy_target", "--tokens", "1,1024,1025,2048,2049,3000", "--emulate")
    assert report["lookups"] == 3 and report["hits"] == 3
    assert report["benchmarks"] == 0 and report["configs_benchmarked"] == 0


def test_a_key_beyond_max_tokens_is_a_miss(built):
    # proves the probe can see a miss: 3001..4096 tokens is NB=4, never built
    cache, _ = built
    report = stand_in(cache, "--target", "toy_target", "--tokens", "4000", "--emulate")
    assert report["benchmarks"] == 1 and report["configs_benchmarked"] == 3


def test_rebuild_does_nothing_when_complete(built):
    cache, m = built
    again = build(toy_spec(cache, tp=(1, 2)), progress=False)
    assert [u.attempts for u in again.units.values()] == [1, 1]
    assert again.entries == m.entries


def test_rebuild_redoes_a_unit_whose_entry_was_damaged(tmp_path):
    m = build(toy_spec(tmp_path, tp=(1,)), progress=False)
    name = next(iter(m.entries))
    (tmp_path / name).write_text("{}")
    again = build(toy_spec(tmp_path, tp=(1,)), progress=False)
    (unit,) = again.units.values()
    assert unit.status == "done" and unit.attempts == 1   # a fresh record: redone from scratch
    assert sha256_file(tmp_path / name) == again.entries[name].sha256


def test_manifest_round_trip(built, tmp_path):
    _, m = built
    manifest_mod.save(m, tmp_path)
    assert manifest_mod.load(tmp_path) == m
    assert json.loads((tmp_path / "manifest.json").read_text())["schema_version"] == 1


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(CacheDirError, match="corrupt manifest"):
        manifest_mod.load(tmp_path)


def test_cache_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CacheDirError, match="not a directory"):
        build(toy_spec(tmp_path / "f"), progress=False)
    with pytest.raises(CacheDirError, match=f"{tmp_path / 'f'} is a file, not a directory"):   # the parent named
        build(toy_spec(tmp_path / "f" / "sub"), progress=False)


def test_cli_build_emulated_and_json(tmp_path):
    cache = tmp_path / "c"
    proc = run_cli("build", "--target", "toy_target", "--max-tokens", "1024", "--cache-dir", cache, "--emulate",
                   "--json", "--no-progress", check=0)
    summary = json.loads(proc.stdout)
    assert summary["entries"] == 1 and summary["units"] == 1
    assert "plan" not in proc.stderr and (cache / "manifest.json").is_file()   # --json: no plan on any stream


def test_cli_build_without_gpu_shows_plan_and_exits_2_leaving_nothing(tmp_path):
    cache = tmp_path / "never"
    proc = run_cli("build", "--model", "qwen3.5-9b", "--tp", "1,2", "--cache-dir", cache, "--no-progress",
                   env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    assert "no CUDA GPU" in proc.stderr and "l2norm_fwd_kernel" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not cache.exists()
