"""TPU v4 shape strings and the feasibility check, on hand-made node lists (no cluster)."""


import pytest

from palm_platform.compat.ray import tpu_pod_type
from palm_platform.ray.feasibility import InfeasibleTopologyError, check_feasible
from palm_platform.topology import SliceShape
from tests.support.paths import ROOT


def fake_node(slice_name, worker_id, pod_type="v4-16", topology="2x2x2", tpu=4, accel=True):
    resources = {"CPU": 1.0, "TPU": float(tpu)}
    if accel:
        resources["accelerator_type:TPU-V4"] = 1.0
    if worker_id == 0:
        resources[f"TPU-{pod_type}-head"] = 1.0
    labels = {
        "ray.io/tpu-slice-name": slice_name,
        "ray.io/tpu-worker-id": str(worker_id),
        "ray.io/tpu-pod-type": pod_type,
        "ray.io/tpu-topology": topology,
        "palm.dev/fake-tpu": "true",
    }
    node_id = f"{slice_name}-{worker_id}".ljust(16, "0")
    return {"NodeID": node_id, "Alive": True, "Resources": resources, "Labels": labels}


def two_pod_cluster(**kwargs):
    return [fake_node(f"pod-{p}", w, **kwargs) for p in range(2) for w in range(2)]


def test_shape_strings_match_ray_tpu_conventions():
    shape = SliceShape(pods=2, hosts_per_pod=2, chips_per_host=4)
    assert (shape.topology, shape.pod_type, shape.head_resource) == (
        "2x2x2",
        "v4-16",
        "TPU-v4-16-head",
    )
    assert SliceShape(1, 1, 4).topology == "2x2x1"
    assert SliceShape(1, 4, 4).pod_type == "v4-32"
    assert tpu_pod_type("2x2x2", "TPU-V4") == shape.pod_type  # Ray's own inference agrees


def test_shape_without_a_v4_topology_is_rejected():
    with pytest.raises(ValueError, match="no TPU v4 topology has 12 chips"):
        _ = SliceShape(1, 3, 4).topology


def test_feasible_request_returns_the_matching_slices():
    views = check_feasible(two_pod_cluster(), SliceShape(2, 2, 4, "2x2x2"))
    assert [v.name for v in views] == ["pod-0", "pod-1"]
    assert all(v.fake for v in views)


def test_too_few_pods_names_what_is_missing_and_the_fix():
    with pytest.raises(InfeasibleTopologyError) as err:
        check_feasible(two_pod_cluster(), SliceShape(3, 2, 4, "2x2x2"))
    message = str(err.value)
    assert "needs 3 pods x 2 hosts x 4 chips of TPU-V4 topology 2x2x2" in message
    assert "2 matching slices (pod-0: 2 hosts, pod-1: 2 hosts)" in message
    assert "palm cluster up --pods 3 --hosts-per-pod 2 --chips-per-host 4" in message


def test_missing_accelerator_type_resource_is_named():
    with pytest.raises(InfeasibleTopologyError, match="no accelerator_type:TPU-V4 resource"):
        check_feasible(two_pod_cluster(accel=False), SliceShape(1, 2, 4, "2x2x2"))


def test_topology_that_disagrees_with_hosts_and_chips_is_rejected():
    with pytest.raises(InfeasibleTopologyError, match="topology 2x2x1 has 4 chips"):
        check_feasible(two_pod_cluster(), SliceShape(1, 2, 4, "2x2x1"))


def test_ray_accepts_paper_pod_topology_after_registration():
    from palm_platform.compat.ray import v4_topologies  # Ray's own table, through its door
    from palm_platform.topology import ensure_ray_accepts_v4_topology

    assert not ensure_ray_accepts_v4_topology("2x2x2")  # already known
    assert not ensure_ray_accepts_v4_topology("3x5x7")  # not a v4 slice: left for Ray to reject
    assert "3x5x7" not in v4_topologies()
    ensure_ray_accepts_v4_topology("12x16x16")  # PaLM's 3072-chip pods
    assert "12x16x16" in v4_topologies()


def test_one_parser_reads_axbxc_for_the_job_and_for_ray():
    from palm_platform.topology import chips_in_topology, parse_topology

    assert parse_topology("12X16x16") == (12, 16, 16) and chips_in_topology("2x2x1") == 4
    for bad in ("2x2", "2x2x0", "axbxc", "2x2x2x2"):
        with pytest.raises(ValueError, match="is not AxBxC"):
            parse_topology(bad)


def test_a_malformed_ici_topology_in_a_job_names_the_field(tmp_path):
    import yaml

    from palm_platform.job import JobError, load_job

    spec = yaml.safe_load(
        (ROOT / "jobs" / "local-cpu.yaml").read_text()
    )
    spec["topology"]["ici_topology"] = "2x4"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(JobError, match="ici_topology '2x4' is not AxBxC"):
        load_job(path)
