"""fleet/: the matrix plans jobs (pure), and `fleet build` runs them on a real local Ray cluster (a head and a worker
node, each with one fake GPU and an accelerator label) as emulated builds of the toy kernel, publishing into a
file:// registry; a re-run skips everything; fetch then picks each GPU type's bundle. Nothing of Ray is mocked."""
import json

import pytest
from helpers import run_cli

from autotune_cache.fleet import matrix

MATRIX = """
models = ["qwen3.5-9b", "qwen3.5-4b"]
tp = [1, 2]
targets = ["toy_target"]
max_tokens = 3000
gpu_types = ["H100", "H200"]
emulate = true
"""


def test_matrix_plans_one_job_per_gpu_type_and_shape():
    js = matrix.jobs(matrix.parse(MATRIX))
    # 4B and 9B share per-rank shapes: 2 GPU types x 2 TP = 4 jobs for the 8 rows
    assert len(js) == 4 and sum(len(j.rows) for j in js) == 8
    assert [(j.gpu_type, j.spec.tp) for j in js] == [("H100", (1,)), ("H100", (2,)), ("H200", (1,)), ("H200", (2,))]
    assert all(j.label == "qwen3.5-9b,qwen3.5-4b" and len(j.units) == 1 and j.configs == 9 for j in js)


@pytest.mark.parametrize("text,error", [
    ("models = []\ngpu_types = ['H100']", "models: Value error, must not be empty"),
    ("models = ['qwen3.5-9b']\ngpu_types = ['H 100']", "letters, digits"),
    ("models = ['qwen3.5-9b']\ngpu_types = ['H100']\ntp = [3]", "qwen3.5-9b at TP 3"),
    ("models = ['nope']\ngpu_types = ['H100']", "nope"),
    ("models = ['qwen3.5-9b']\ngpu_types = ['H100']\nextra = 1", "extra"),
    ("models = [", "not TOML"),
])
def test_bad_matrix_is_one_line_exit_2(tmp_path, text, error):
    path = tmp_path / "m.toml"
    path.write_text(text)
    proc = run_cli("fleet", "plan", path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and error in lines[0] and "Traceback" not in proc.stderr, \
        proc.stderr


@pytest.fixture(scope="session")
def ray_cluster():
    """A head and one worker node, one fake GPU each, labelled H100 and H200 (Ray's accelerator_type resources);
    no dashboard, 100 MB object stores. Shared by every test of the session."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster
    store = 100 << 20
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, num_gpus=1, resources={"accelerator_type:H100": 1}, object_store_memory=store,
        include_dashboard=False))
    cluster.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:H200": 1}, object_store_memory=store)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_fleet_build_publishes_each_gpu_type_then_skips(ray_cluster, tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(MATRIX)
    url = (tmp_path / "reg").as_uri()
    proc = run_cli("fleet", "build", path, "--registry", url, "--address", ray_cluster.address, "--json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    first = json.loads(proc.stdout)
    assert first["ok"] and first["jobs"]["built"] == 4 and len(first["rows"]) == 8
    nodes = {r["gpu_type"]: r["node"] for r in first["rows"]}
    assert set(nodes) == {"H100", "H200"}
    listed = json.loads(run_cli("ls", url, "--json", check=0).stdout)["bundles"]
    assert sorted((b["gpu_type"], b["tp"]) for b in listed) == [("H100", [1]), ("H100", [2]), ("H200", [1]),
                                                                ("H200", [2])]
    assert all(b["model"] == "qwen3.5-9b,qwen3.5-4b" for b in listed)

    again = json.loads(run_cli("fleet", "build", path, "--registry", url, "--address", ray_cluster.address,
                               "--json", check=0).stdout)
    assert again["jobs"]["skipped"] == 4 and again["jobs"]["built"] == 0
    assert len(json.loads(run_cli("ls", url, "--json", check=0).stdout)["bundles"]) == 4   # nothing new

    got = json.loads(run_cli("fetch", url, tmp_path / "srv", "--model", "qwen3.5-4b", "--tp", "2", "--target",
                             "toy_target", "--max-tokens", "3000", "--gpu-name", "H200", "--allow-emulated",
                             "--json", check=0).stdout)
    h200 = {r["tp"]: r["bundle_sha256"] for r in first["rows"] if r["gpu_type"] == "H200"}
    assert got["gpu_type"] == "H200" and got["bundle_sha256"] == h200[2] and got["warnings"] == []


def test_gpu_type_without_a_node_is_reported_not_waited_for(ray_cluster, tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(MATRIX.replace('gpu_types = ["H100", "H200"]', 'gpu_types = ["A100"]'))
    proc = run_cli("fleet", "build", path, "--registry", (tmp_path / "reg").as_uri(), "--address",
                   ray_cluster.address)
    assert proc.returncode == 1 and "no node offers accelerator_type:A100" in proc.stdout + proc.stderr
