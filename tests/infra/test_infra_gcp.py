"""infra/gcp/: Ray cluster launcher configs for TPU v4 agree with Ray's schema and their job file.

Each infra/gcp/<name>.yaml is the cluster for jobs/<name>.yaml. The schema is the one the
installed `ray` ships (ray/autoscaler/ray-schema.json), which `ray up` itself validates with.
"""

from __future__ import annotations

import copy
import json
import math
import re
import sys
import types
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray._private.accelerators import tpu
from ray.autoscaler._private.util import prepare_config, validate_config

from palm_platform.job import load_job
from tests.support.paths import ROOT

CONFIGS = sorted((ROOT / "infra" / "gcp").glob("*.yaml"))
RAY_SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _tpu_node_types(config: dict) -> dict[str, dict]:
    """Node types whose node_config is a TPU (the GCP provider's rule: no machineType)."""
    return {
        name: node_type
        for name, node_type in config["available_node_types"].items()
        if "machineType" not in node_type["node_config"]
    }


def test_launcher_configs_exist_for_the_8b_and_540b_jobs():
    assert {p.stem for p in CONFIGS} >= {"palm8b", "palm540b"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_launcher_config_validates_against_rays_cluster_schema(path: Path):
    config = _load(path)
    jsonschema.Draft7Validator(RAY_SCHEMA).validate(config)
    # What `ray up` does before it creates anything: fill defaults, then validate again.
    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.mark.parametrize(
    "breakage",
    [
        (
            "typo'd node-type field",
            lambda c: c["available_node_types"]["ray_head"].update(min_worker=0),
        ),
        (
            "resource as a string",
            lambda c: c["available_node_types"]["ray_head"]["resources"].update(CPU="0"),
        ),
        ("typo'd top-level field", lambda c: c.update(setup_command=[])),
    ],
    ids=lambda b: b[0],
)
def test_rays_schema_rejects_a_broken_launcher_config(breakage):
    config = _load(ROOT / "infra" / "gcp" / "palm8b.yaml")
    breakage[1](config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, RAY_SCHEMA)


@pytest.fixture
def gcp_provider_config_module(monkeypatch):
    """Ray's GCP provider config module, importable without the Google API client.

    It needs googleapiclient/httplib2 only to talk to GCP; stubs stand in for them so that its
    real TPU checks (`get_node_type`) run offline. Modules imported here are dropped after.
    """
    http_error = type("HttpError", (Exception,), {})
    stubs = {
        "httplib2": types.ModuleType("httplib2"),
        "google_auth_httplib2": types.ModuleType("google_auth_httplib2"),
        "googleapiclient": types.ModuleType("googleapiclient"),
        "googleapiclient.discovery": types.ModuleType("googleapiclient.discovery"),
        "googleapiclient.errors": types.ModuleType("googleapiclient.errors"),
        "googleapiclient.http": types.ModuleType("googleapiclient.http"),
    }
    stubs["google_auth_httplib2"].AuthorizedHttp = object
    stubs["googleapiclient.discovery"].Resource = object
    stubs["googleapiclient.errors"].HttpError = http_error
    for name in ("discovery", "errors", "http"):
        setattr(stubs["googleapiclient"], name, stubs[f"googleapiclient.{name}"])
    before = set(sys.modules)
    for name, module in stubs.items():
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, module)
    import ray.autoscaler._private.gcp.config as gcp_config

    yield gcp_config
    for name in set(sys.modules) - before:
        if name.startswith("ray.autoscaler._private.gcp"):
            sys.modules.pop(name, None)  # not monkeypatch.delitem: its undo would re-add it


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_node_configs_pass_rays_gcp_provider_checks(path: Path, gcp_provider_config_module):
    gcp = gcp_provider_config_module
    config = _load(path)
    head = config["available_node_types"][config["head_node_type"]]["node_config"]
    assert gcp.get_node_type(head) == gcp.GCPNodeType.COMPUTE, "the head must be a CPU VM"
    for name, node_type in _tpu_node_types(config).items():
        assert gcp.get_node_type(node_type["node_config"]) == gcp.GCPNodeType.TPU, name


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_tpu_slices_match_the_job_topology(path: Path, gcp_provider_config_module):
    job = load_job(ROOT / "jobs" / path.name)
    topo = job.topology
    config = _load(path)
    tpu_types = _tpu_node_types(config)
    assert len(tpu_types) == 1, f"{path.name}: expected one TPU node type, got {sorted(tpu_types)}"
    node_type = next(iter(tpu_types.values()))
    node_config = node_type["node_config"]

    # The slice shape is pinned, and it is the job's.
    accelerator = node_config["acceleratorConfig"]
    assert accelerator["type"] == "V4"
    assert accelerator["topology"] == topo.ici_topology
    chips = math.prod(int(d) for d in accelerator["topology"].split("x"))
    assert chips == topo.chips_per_pod

    # TPU v4 type names count TensorCores (2 per chip): what Ray derives from the config.
    expected_type = f"v4-{2 * topo.chips_per_pod}"
    assert gcp_provider_config_module.tpu_accelerator_config_to_type(accelerator) == expected_type
    hosts = chips // tpu.get_num_tpu_visible_chips_per_host(expected_type)
    assert hosts == topo.hosts_per_pod

    # One launcher "worker" is one slice: exactly the job's pods, no more, no fewer.
    assert node_type["min_workers"] == node_type["max_workers"] == topo.pods
    assert config["max_workers"] >= topo.pods
    # Per-host resources as Ray's TPU autodetection gives them on a v4 host.
    assert node_type["resources"] == {"TPU": topo.chips_per_host, f"TPU-{expected_type}-head": 1}
    assert node_type["labels"] == {
        "ray.io/tpu-pod-type": expected_type,
        "ray.io/tpu-topology": topo.ici_topology,
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_host_installs_this_project(path: Path):
    config = prepare_config(copy.deepcopy(_load(path)))  # merges setup_commands in
    repo = "/home/ubuntu/palm-platform"
    assert config["file_mounts"][repo] == "."
    installs = {
        "head": " ".join(config["head_setup_commands"]),
        "worker": " ".join(config["worker_setup_commands"]),
    }
    for role, commands in installs.items():
        assert "uv export --project ~/palm-platform --frozen" in commands, role  # uv.lock's pins
        assert "-c ~/palm-constraints.txt" in commands, role
        assert "~/palm-venv" in commands, role
    assert f"'{repo}[tpu]'" in installs["worker"], "TPU hosts need the tpu extra (libtpu)"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_wandb_key_comes_from_secret_manager_not_the_file(path: Path):
    text = path.read_text()
    assignments = re.findall(r"WANDB_API_KEY=(.*)", text)
    assert assignments, "the Ray processes need WANDB_API_KEY in their environment"
    assert all(a.startswith('"$(gcloud secrets versions access') for a in assignments)
    assert not re.search(r"\b[0-9a-f]{40}\b", text), "looks like a W&B key in the file"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_dashboard_listens_on_the_head_only(path: Path):
    head_start = " ".join(_load(path)["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # reached through `ray dashboard`


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_cpu_workers_for_the_data_prepare_job_scale_from_zero(
    path: Path, gcp_provider_config_module
):
    gcp = gcp_provider_config_module
    config = prepare_config(copy.deepcopy(_load(path)))
    node_type = config["available_node_types"]["cpu_prepare"]
    assert gcp.get_node_type(node_type["node_config"]) == gcp.GCPNodeType.COMPUTE
    # On demand: none while nothing is prepared, added when the prepare job waits for CPUs.
    assert node_type["min_workers"] == 0 < node_type["max_workers"]
    topo = load_job(ROOT / "jobs" / path.name).topology
    assert config["max_workers"] >= topo.pods + node_type["max_workers"]
    assert node_type["resources"]["CPU"] >= 1 and "TPU" not in node_type["resources"]
    # The bucket identity (input Parquet, the store), and the project without libtpu.
    (account,) = node_type["node_config"]["serviceAccounts"]
    assert account["email"].startswith("palm-tpu@")
    setup = " ".join(node_type["worker_setup_commands"])
    assert "-c ~/palm-constraints.txt" in setup and "[tpu]" not in setup


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_node_starts_in_token_mode_with_the_token_from_secret_manager(path: Path):
    config = _load(path)
    for role in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(config[role])
        before_ray = start.split("ray start", 1)[0]
        assert "export RAY_AUTH_MODE=token" in before_ray, role
        assert ('RAY_AUTH_TOKEN="$(gcloud secrets versions access latest '
                '--secret=palm-ray-auth-token)"') in before_ray, role
        # no secret, no node: a node that started anyway would run without the token
        assert '[ -n "$RAY_AUTH_TOKEN" ] || {' in before_ray and "exit 1" in before_ray, role
    text = path.read_text()
    assert not re.search(r"RAY_AUTH_TOKEN=[\"']?[0-9a-f]{16}", text), "a token in the file"
    assert not re.search(r"\b[0-9a-f]{64}\b", text), "looks like a Ray token in the file"
