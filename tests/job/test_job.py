"""Job files: the shipped ones load; bad ones fail with file, field and fix."""

from pathlib import Path

import pytest
import yaml

from palm_platform.job import Job, JobError, load_job
from tests.support.paths import ROOT

LOCAL = ROOT / "jobs" / "local-cpu.yaml"


@pytest.mark.parametrize("name", ["palm8b", "palm62b", "palm540b", "local-cpu"])
def test_shipped_job_files_load(name):
    job = load_job(ROOT / "jobs" / f"{name}.yaml")
    assert job.name == name and job.topology.chips_per_pod % job.mesh.model == 0


def test_540b_job_is_the_papers_layout():
    job = load_job(ROOT / "jobs" / "palm540b.yaml")
    assert (job.topology.pods, job.topology.chips_per_pod, job.mesh.model, job.data_parallel) == (
        2,
        3072,
        12,
        256,
    )
    assert [p.sequences for p in job.train.batch_schedule] == [512, 1024, 2048]
    assert [job.train.batch_size_at(s) for s in (0, 49_999, 50_000, 114_999, 115_000)] == [
        512,
        512,
        1024,
        1024,
        2048,
    ]
    assert {s.name: s.weight for s in job.data.sources} == {
        "social_media_conversations": 0.50, "filtered_webpages": 0.27, "books": 0.13,
        "github": 0.05, "wikipedia": 0.04, "news": 0.01}


def test_job_files_are_executable_with_a_palm_shebang():
    for path in (ROOT / "jobs").glob("*.yaml"):
        assert path.read_text().startswith("#!/usr/bin/env -S palm run\n"), path
        assert path.stat().st_mode & 0o111, f"{path} is not executable"


def test_relative_paths_resolve_against_the_job_file():
    job = load_job(LOCAL)
    assert job.checkpoint.directory == str(ROOT / "runs" / "local-cpu" / "checkpoints")


def write(tmp_path, mutate) -> Path:
    spec = yaml.safe_load(LOCAL.read_text())
    mutate(spec)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    "mutate,field,words",
    [
        (lambda s: s["train"].update(steps=0), "train.steps", "greater than or equal to 1"),
        (lambda s: s["mesh"].update(modle=2), "mesh.modle", "remove it or fix its spelling"),
        (lambda s: s["model"].update(preset="palm-9b"), "model", "unknown preset"),
        (lambda s: s["model"].update(overrides={"layers": 3}), "model", "unknown override"),
        (
            lambda s: s["mesh"].update(model=3),
            "mesh.model, topology.hosts_per_pod",
            "does not divide the 8 chips",
        ),
        (lambda s: s["topology"].update(ici_topology="4x4x4"), "topology", "has 64 chips"),
        (
            lambda s: s["train"].update(batch_schedule=[{"sequences": 12}]),
            "train.batch_schedule[0].sequences, topology.pods",
            "do not split over",
        ),
        (lambda s: s.pop("checkpoint"), "checkpoint", "Fix: add it"),
        (
            lambda s: s["data"].update(sources=[{"name": "x", "paths": ["a"], "weight": -1}]),
            "data.sources[0].weight",
            "greater than 0",
        ),
        (
            lambda s: s["checkpoint"].update(rollback_steps=20),
            "checkpoint.rollback_steps, faults.spike.rollback_steps",
            "remove checkpoint.rollback_steps",
        ),
    ],
)
def test_bad_job_names_file_field_and_fix(tmp_path, mutate, field, words):
    path = write(tmp_path, mutate)
    with pytest.raises(JobError) as error:
        load_job(path)
    message = str(error.value)
    assert str(path) in message and words in message
    assert f"field {field}" in message or f"fields {field}" in message
    assert "Fix:" in message


def test_one_rollback_distance_sets_the_spike_remedy_and_checkpoint_retention(tmp_path):
    job = load_job(write(tmp_path, lambda s: s["faults"]["spike"].update(rollback_steps=30)))
    assert job.faults.spike.rollback_steps == job.checkpoint.rollback_steps == 30
    # a recorded job (job.json, the Ray worker's copy) repeats it in the checkpoint section
    assert Job.model_validate(job.model_dump(mode="json")) == job


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(JobError, match="bad.yaml:2:1: not valid YAML"):
        load_job(bad)
    with pytest.raises(JobError, match="job file not found"):
        load_job(tmp_path / "missing.yaml")
