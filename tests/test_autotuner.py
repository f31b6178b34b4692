"""The room that touches Triton's runtime (autotune_cache/autotuner/): its hooks run in the one declared order
whatever order the rooms added them in, install once, take hooks from several threads at once, and a disk lookup
sees its own thread's cache manager. Each scenario runs real Triton on the fake GPU in a process of its own."""
import json
import subprocess
import sys

from helpers import TESTS


def scenario(name, tmp_path):
    proc = subprocess.run([sys.executable, str(TESTS / "autotuner_scenarios.py"), name, str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_hooks_added_in_reverse_run_in_the_declared_order(tmp_path):
    out = scenario("declared_order", tmp_path)
    phases = out["phases"]
    assert [p for at, p in out["calls"] if at == "prune_configs"] == phases
    assert [p for at, p in out["calls"] if at == "miss"] == phases


def test_the_recorders_miss_hook_runs_before_a_strict_one_added_earlier(tmp_path):
    # The strict hook raises: had it run first (the order it was added in), the record would not say "miss".
    out = scenario("strict_after_record", tmp_path)
    assert out["raised"] == "strict: would be benchmarked"
    assert out["outcomes"] == ["miss"]
    assert out["miss_phases"] == ["record", "serve"]


def test_installing_twice_wraps_each_method_once_and_adds_each_hook_once(tmp_path):
    out = scenario("double_install", tmp_path)
    assert out["wrapped_once"] == {"run": True, "prune_configs": True, "check_disk_cache": True}
    assert out["phases"]["prune_configs"] == ["precompile", "selection", "record"]
    assert out["phases"]["check_disk_cache"] == ["lookups"]
    assert out["phases"]["run"] == ["lookups"]
    assert out["phases"]["_bench"] == ["emulation"]
    assert out["phases"]["miss"] == ["record"] and out["phases"]["benched"] == ["selection"]
    assert out["phases"]["lookup"] == ["record"] and out["phases"]["launch"] == ["listen"]
    assert out["launches"] == 1


def test_hooks_added_from_two_threads_at_once_are_all_there_once(tmp_path):
    out = scenario("concurrent_add", tmp_path)
    assert out["wrapped_once"] == {"run": True, "prune_configs": True}
    assert out["hooks"] == {"run": 200, "prune_configs": 200}
    assert out["ran"] == {"run": 200, "prune_configs": 200}
    assert out["order"] == {"run": ["record", "listen"], "prune_configs": ["record", "listen"]}


def test_two_threads_looking_up_at_once_each_see_their_own_cache_manager(tmp_path):
    # Swapping the autotuner's get_cache_manager global per call (what this replaced) fails here: the second
    # thread's swap captures the first's wrapper, so the first lookup's path lands in the second lookup's dir, and
    # the global is left as the first's wrapper.
    out = scenario("two_threads", tmp_path)
    assert out["errors"] == [] and out["replaced_once"]
    toy, copy = out["lookup-toy"], out["lookup-copy"]
    assert toy["kernel"] == "toy_scale_kernel" and copy["kernel"] == "record_copy_kernel"
    for lookup in (toy, copy):
        assert not lookup["hit"]
        assert lookup["file"] == f"{lookup['kernel']}.autotune.json" and lookup["file_key"] == lookup["key"]
    assert toy["dir"] != copy["dir"]


def test_a_thread_reading_another_dir_leaves_the_other_threads_lookups_theirs(tmp_path):
    # disk.reading, as scripts/_kernel_timing.py reads each cache's winner: Triton's own lookup of the toy key, read
    # from another dir on one thread, while another thread's watched lookup is inside Triton's at the same time
    out = scenario("reading_another_dir", tmp_path / "cache")
    assert out["errors"] == [] and out["one_wrapper"]
    assert out["hit"] is True and out["winner"] and out["asked"] == 1   # found in the other dir, the same winner
    assert out["lookup_kernel"] == "record_copy_kernel" and out["lookup_root"] == out["cache_dir"]


def test_a_replacement_taken_from_another_install_runs_under_the_hooks(tmp_path):
    # hooks.take, as scripts/_kernel_timing.py takes vLLM's force_first_config run: handed back, the method put back
    out = scenario("take_a_replacement", tmp_path)
    assert out["taken"] and out["put_back"] and out["raised"] and out["nothing"]
    assert out["phases"] == ["listen", "replacement"] and out["wrapped_once"] == {"run": True}
    assert out["ran"] and out["ran"] == ["listen", "theirs"] * (len(out["ran"]) // 2)


def test_compile_events_reach_every_listener(tmp_path):
    out = scenario("compile_events", tmp_path)
    assert out["count"] == {"compiled": 3} and out["hits"] == [False] * 3 and out["before"] == [False] * 3
    assert out["names"] == ["toy_scale_kernel"] and out["timed"]
