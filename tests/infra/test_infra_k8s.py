"""infra/k8s/: KubeRay manifests validate against the CRD schema and match their job file.

Each infra/k8s/<name>-raycluster.yaml and <name>-rayjob.yaml is for jobs/<name>.yaml. The
schema is a hand-written subset of KubeRay v1.3's ray.io/v1 CRDs (tests/data/infra/, which
says what it covers): the real CRD cannot be downloaded here.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from palm_platform.job import load_job
from tests.support.paths import ROOT

K8S = ROOT / "infra" / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
CRD_SUBSET = yaml.safe_load(
    (Path(__file__).parent / "kuberay_v1_crd_subset.yaml").read_text()
)


def _validator(kind: str) -> Draft202012Validator:
    schema = {"$schema": CRD_SUBSET["$schema"], "$defs": CRD_SUBSET["$defs"], **CRD_SUBSET[kind]}
    return Draft202012Validator(schema)


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _cluster_spec(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def _job_name(path: Path) -> str:
    return path.stem.rsplit("-", 1)[0]


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _tpu_groups(spec: dict) -> list[dict]:
    return [
        g
        for g in spec["workerGroupSpecs"]
        if "cloud.google.com/gke-tpu-accelerator" in g["template"]["spec"].get("nodeSelector", {})
    ]


def _strings(node) -> list[str]:
    """Every string value anywhere in a manifest."""
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


def test_schema_subset_is_a_valid_json_schema():
    for kind in ("RayCluster", "RayJob"):
        Draft202012Validator.check_schema(_validator(kind).schema)


def test_manifests_exist_for_the_8b_and_540b_jobs():
    assert {p.name for p in MANIFESTS} >= {
        f"{job}-{kind}.yaml" for job in ("palm8b", "palm540b") for kind in ("raycluster", "rayjob")
    }


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_kuberay_crd_schema(path: Path):
    manifest = _load(path)
    assert (
        manifest["kind"]
        == {"raycluster": "RayCluster", "rayjob": "RayJob"}[path.stem.rsplit("-", 1)[1]]
    )
    _validator(manifest["kind"]).validate(manifest)


def _worker_group(manifest: dict) -> dict:
    return _cluster_spec(manifest)["workerGroupSpecs"][0]


BREAKAGES = {
    "typo'd worker-group field": lambda m: _worker_group(m).update(numOfHost=64),
    "numOfHosts as a string": lambda m: _worker_group(m).update(numOfHosts="64"),
    "worker group without groupName": lambda m: _worker_group(m).pop("groupName"),
    "rayStartParams value not a string": lambda m: _worker_group(m)["rayStartParams"].update(
        port=6379
    ),
    "typo'd container field": lambda m: _worker_group(m)["template"]["spec"]["containers"][
        0
    ].update(resource={}),
    "unknown submissionMode": lambda m: m["spec"].update(submissionMode="K8sMode"),
    "shutdownAfterJobFinishes as a string": lambda m: m["spec"].update(
        shutdownAfterJobFinishes="yes"
    ),
    "wrong apiVersion": lambda m: m.update(apiVersion="ray.io/v1alpha2"),
}


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_kuberay_crd_schema_rejects_a_broken_manifest(name: str):
    manifest = _load(K8S / "palm8b-rayjob.yaml")
    broken = copy.deepcopy(manifest)
    BREAKAGES[name](broken)
    assert broken != manifest
    assert list(_validator("RayJob").iter_errors(broken)), f"{name} was accepted"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_tpu_worker_group_matches_the_job_topology(path: Path):
    topo = load_job(ROOT / "jobs" / f"{_job_name(path)}.yaml").topology
    groups = _tpu_groups(_cluster_spec(_load(path)))
    assert len(groups) == 1, "one TPU worker group: every pod of the job is one replica of it"
    group = groups[0]
    # A replica is one slice of numOfHosts pods; slices are all-or-nothing, so pinned.
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == topo.pods
    assert group["numOfHosts"] == topo.hosts_per_pod
    assert group["groupName"] == f"tpu-v4-{2 * topo.chips_per_pod}"  # v4 names count TensorCores
    pod = group["template"]["spec"]
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v4-podslice",
        "cloud.google.com/gke-tpu-topology": topo.ici_topology,
    }
    (container,) = pod["containers"]
    for kind in ("requests", "limits"):
        assert int(container["resources"][kind]["google.com/tpu"]) == topo.chips_per_host, kind


@pytest.mark.parametrize("job", ["palm8b", "palm540b"])
def test_rayjob_runs_its_job_on_the_raycluster_spec(job: str):
    cluster = _load(K8S / f"{job}-raycluster.yaml")
    rayjob = _load(K8S / f"{job}-rayjob.yaml")
    assert rayjob["spec"]["rayClusterSpec"] == cluster["spec"], "the two manifests drifted apart"
    assert rayjob["spec"]["entrypoint"] == f"palm run /app/jobs/{job}.yaml"  # WORKDIR /app
    assert (ROOT / "jobs" / f"{job}.yaml").is_file()
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_dashboard_and_job_api_stay_inside_the_cluster(path: Path):
    spec = _cluster_spec(_load(path))
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert head.get("enableIngress") is not True
    assert not {"LoadBalancer", "NodePort"} & set(_strings(_load(path))), "exposed outside"
    for container in _containers(spec):
        assert all("hostPort" not in port for port in container.get("ports", []))
    assert not any(
        g["template"]["spec"].get("hostNetwork") for g in [head, *spec["workerGroupSpecs"]]
    )


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_wandb_key_comes_from_a_kubernetes_secret(path: Path):
    for container in _containers(_cluster_spec(_load(path))):
        env = {e["name"]: e for e in container.get("env", [])}
        key = env.get("WANDB_API_KEY")
        assert key is not None, f"{container['name']} has no WANDB_API_KEY"
        assert "value" not in key
        assert key["valueFrom"]["secretKeyRef"] == {"name": "palm-wandb", "key": "api-key"}


def test_image_and_manifests_run_the_pinned_ray():
    """Head, workers and the laptop must run one Ray version; uv.lock pins it."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (pin,) = [p["version"] for p in lock["package"] if p["name"] == "ray"]
    dockerfile = (K8S / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(pin)}-py311$", dockerfile, re.M)
    assert "uv export --frozen" in dockerfile and "-c /tmp/constraints.txt '.[tpu]'" in dockerfile
    for path in MANIFESTS:
        assert _cluster_spec(_load(path))["rayVersion"] == pin, path.name


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_cpu_worker_group_for_the_data_prepare_job_holds_no_tpu(path: Path):
    spec = _cluster_spec(_load(path))
    (group,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "cpu-prepare"]
    # Off until a store is prepared ahead of a run; the patch path in its comment is its index.
    assert group["replicas"] == group["minReplicas"] == 0 < group["maxReplicas"]
    assert spec["workerGroupSpecs"].index(group) == 1
    assert "/spec/workerGroupSpecs/1/replicas" in path.read_text()
    pod = group["template"]["spec"]
    assert pod["serviceAccountName"] == "palm-tpu"  # the bucket: inputs in, shards out
    assert "cloud.google.com/gke-tpu-accelerator" not in pod["nodeSelector"]
    (container,) = pod["containers"]
    for kind in ("requests", "limits"):
        assert "google.com/tpu" not in container["resources"][kind]
        assert int(container["resources"][kind]["cpu"]) >= 1


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_ray_container_is_in_token_mode_with_the_token_from_a_secret(path: Path):
    manifest = _load(path)
    containers = _containers(_cluster_spec(manifest))
    if manifest["kind"] == "RayJob":  # its submitter runs `ray job submit` against the head
        containers += manifest["spec"]["submitterPodTemplate"]["spec"]["containers"]
    for container in containers:
        env = {e["name"]: e for e in container.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", container["name"]
        token = env.get("RAY_AUTH_TOKEN")
        assert token is not None and "value" not in token, container["name"]
        assert token["valueFrom"]["secretKeyRef"] == {"name": "palm-ray-auth", "key": "token"}
    assert not re.search(r"\b[0-9a-f]{64}\b", path.read_text()), "looks like a token in the file"
