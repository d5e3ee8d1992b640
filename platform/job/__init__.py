"""The job file: one YAML that names the model, topology, data, optimizer, checkpoints, faults.

A component below the job in the package layers owns its section's config
(`data/config.py`, `checkpoint/config.py`, `supervise/config.py`, `metrics/sink.py`); the
sections of the layers above it, which read the whole job (the train loop's schedule and
optimizer, the in-loop eval), live here beside it (`job/train.py`, `job/eval.py`), so that
nothing below the job imports upwards. This module composes them into `Job`, checks what
spans several sections (`CrossFieldError`) and turns every problem into one message that
names the file, the field and the fix. Decisions are made when the job is built, not with
`if config.x` inside the step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from palm_platform.checkpoint.config import CheckpointConfig
from palm_platform.data.config import DataConfig
from palm_platform.job.eval import EvalConfig
from palm_platform.job.train import InitFromConfig, OptimizerConfig, TrainConfig
from palm_platform.mesh_config import MeshSection, TopologySection
from palm_platform.metrics.sink import MetricsConfig
from palm_platform.profile.config import ProfileConfig
from palm_platform.supervise.config import FaultsConfig, SpikeConfig

STRICT = ConfigDict(extra="forbid", frozen=True)


class JobError(ValueError):
    """A job file that cannot run, with file, field and fix in the message."""


class CrossFieldError(ValueError):
    """Fields that are valid alone but not together: names them all, and the fix."""

    def __init__(self, fields: tuple[str, ...], problem: str, fix: str):
        super().__init__(f"{problem}. Fix: {fix}")
        self.fields, self.problem, self.fix = fields, problem, fix


class ModelSection(BaseModel):
    model_config = STRICT
    preset: str = Field(description="palm-8b, palm-62b, palm-540b, palm-100m, palm-tiny, palm-test")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="ModelConfig fields to change, e.g. {num_layers: 4}"
    )

    @model_validator(mode="after")
    def _known(self) -> ModelSection:
        from palm.config import PRESETS, ModelConfig

        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = sorted(set(self.overrides) - fields)
        if unknown:
            raise ValueError(f"unknown override(s) {unknown}; "
                             f"ModelConfig fields are {sorted(fields)}")
        try:  # a wrong type (num_layers: two) fails inside ModelConfig, not as a traceback
            self.build()
        except (TypeError, ValueError) as err:
            raise CrossFieldError(
                ("model.overrides", "model.preset"),
                f"the overrides do not make a valid {self.preset} config ({err})",
                "give each override a value of its ModelConfig field's type") from None
        return self

    def build(self):
        from palm.config import preset

        return preset(self.preset, **self.overrides)


class Job(BaseModel):
    model_config = STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="run name")
    model: ModelSection
    topology: TopologySection
    mesh: MeshSection = Field(default_factory=MeshSection)
    train: TrainConfig
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    checkpoint: CheckpointConfig
    faults: FaultsConfig = Field(default_factory=FaultsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    eval: EvalConfig | None = Field(
        default=None, description="held-out eval during training (none: nothing held out)"
    )
    init_from: InitFromConfig | None = Field(
        default=None, description="fine-tuning: start from another run's checkpoint"
    )
    profile: ProfileConfig = Field(
        default_factory=ProfileConfig, description="profiler traces at fixed steps (palm profile)"
    )
    run_dir: str = Field(default="runs", description="parent of this job's run folder")

    @model_validator(mode="before")
    @classmethod
    def _one_rollback_distance(cls, raw: Any) -> Any:
        """`faults.spike.rollback_steps` is the one rollback distance: the spike remedy restores
        at least that far back, and checkpoint retention keeps what such a rollback needs
        (CheckpointConfig.rollback_steps is filled from it). The old second spelling,
        `checkpoint.rollback_steps`, is accepted only when it says the same (a recorded job)."""
        if not isinstance(raw, dict) or not isinstance(raw.get("checkpoint"), dict):
            return raw  # the field validators report what is wrong
        faults = raw.get("faults") if isinstance(raw.get("faults"), dict) else {}
        spike = faults.get("spike") if isinstance(faults.get("spike"), dict) else {}
        distance = spike.get("rollback_steps", SpikeConfig.model_fields["rollback_steps"].default)
        old = raw["checkpoint"].get("rollback_steps", distance)
        if old != distance:
            raise CrossFieldError(
                ("checkpoint.rollback_steps", "faults.spike.rollback_steps"),
                f"checkpoint.rollback_steps={old} is no longer a separate setting: retention now "
                f"keeps what a rollback of faults.spike.rollback_steps={distance} needs",
                "remove checkpoint.rollback_steps (set faults.spike.rollback_steps instead)")
        return {**raw, "checkpoint": {**raw["checkpoint"], "rollback_steps": distance}}

    @model_validator(mode="after")
    def _feasible(self) -> Job:
        t, m = self.topology, self.mesh
        chips = "topology.hosts_per_pod x topology.chips_per_host"
        if t.chips_per_pod % m.model:
            raise CrossFieldError(
                ("mesh.model", "topology.hosts_per_pod", "topology.chips_per_host"),
                f"mesh.model={m.model} does not divide the {t.chips_per_pod} chips of a pod "
                f"({chips})", f"set mesh.model to a divisor of {t.chips_per_pod}")
        data = t.chips_per_pod // m.model
        cfg = self.model.build()
        if cfg.num_heads % m.model:
            raise CrossFieldError(
                ("mesh.model", "model.preset"),
                f"mesh.model={m.model} does not divide the {cfg.num_heads} heads of "
                f"{self.model.preset}", f"set mesh.model to a divisor of {cfg.num_heads}")
        replicas = t.pods * data
        for i, phase in enumerate(self.train.batch_schedule):
            if phase.sequences % replicas:
                raise CrossFieldError(
                    (f"train.batch_schedule[{i}].sequences", "topology.pods", "mesh.model"),
                    f"{phase.sequences} sequences do not split over pods x data = {t.pods} x "
                    f"{data} = {replicas} data-parallel replicas (data = chips per pod / "
                    "mesh.model)", f"use a multiple of {replicas} sequences")
            micro = self.train.microbatch_sequences
            if micro is not None and (phase.sequences % micro or micro % replicas):
                raise CrossFieldError(
                    ("train.microbatch_sequences", f"train.batch_schedule[{i}].sequences"),
                    f"train.microbatch_sequences={micro} must divide every batch size "
                    f"({phase.sequences}) and be a multiple of {replicas} replicas",
                    f"use a multiple of {replicas} that divides {phase.sequences}")
        if t.elastic:
            from palm_platform.pod_count import check_pod_counts

            problem = check_pod_counts([p.sequences for p in self.train.batch_schedule],
                                       self.train.microbatch_sequences, t.pods, t.fewest_pods, data)
            if problem:
                raise CrossFieldError(("topology.min_pods", "train.microbatch_sequences"), problem,
                                      "raise topology.min_pods, or pick a microbatch every pod "
                                      "count down to min_pods divides")
        seq_len = self.seq_len
        if seq_len > cfg.max_seq_len:
            raise CrossFieldError(
                ("train.seq_len", "model.preset"),
                f"train.seq_len={seq_len} exceeds the model's max_seq_len={cfg.max_seq_len}",
                f"set train.seq_len <= {cfg.max_seq_len} or override model max_seq_len")
        return self

    @property
    def seq_len(self) -> int:
        return self.train.seq_len or self.model.build().max_seq_len

    @property
    def data_parallel(self) -> int:
        return self.topology.chips_per_pod // self.mesh.model


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


MAX_PROBLEMS_SHOWN = 5


def format_validation_error(path: Path, error: ValidationError) -> str:
    """One line per problem (at most MAX_PROBLEMS_SHOWN): field, what is wrong, the fix.

    Values are echoed shortened to one line: a job built from aliases can be huge, and a
    section or the whole job is never echoed at all.
    """
    from palm_platform.yaml_safe import one_line, short_repr

    problems = error.errors()
    lines = [f"{path}: invalid job file ({len(problems)} problem(s))"]
    for e in problems[:MAX_PROBLEMS_SHOWN]:
        cross = (e.get("ctx") or {}).get("error")
        if isinstance(cross, CrossFieldError):
            lines.append(one_line(f"  fields {', '.join(cross.fields)}: {cross.problem}. "
                                  f"Fix: {cross.fix}.", 400))
            continue
        field = _field_path(e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            fix = "add it"
        elif e["type"] == "extra_forbidden":
            fix = "remove it or fix its spelling"
        else:
            fix = "correct the value"
        value = e.get("input")
        got = ("" if e["type"] == "missing" or isinstance(value, dict)
               else f" (got {short_repr(value)})")
        lines.append(one_line(f"  field {field}: {msg}{got}. Fix: {fix}.", 400))
    if len(problems) > MAX_PROBLEMS_SHOWN:
        lines.append(f"  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more")
    return "\n".join(lines)


def parse_job(raw: Any, path: Path) -> Job:
    if not isinstance(raw, dict):
        raise JobError(f"{path}: a job file must be a YAML mapping, got {type(raw).__name__}")
    try:
        return Job.model_validate(raw)
    except ValidationError as error:
        raise JobError(format_validation_error(path, error)) from None


def load_job(path: str | Path) -> Job:
    """Read, validate and resolve a job file; raises JobError with file, field and fix."""
    from palm_platform.yaml_safe import YamlFileError, load_yaml_file

    path = Path(path)
    if not path.is_file():
        raise JobError(f"{path}: job file not found. Fix: pass the path of a YAML job file.")
    try:
        raw = load_yaml_file(path)
    except YamlFileError as error:
        raise JobError(str(error)) from None
    job = parse_job(raw, path)
    return resolve_paths(job, path.parent.resolve())


def load_job_or_exit(path: str | Path) -> Job:
    """For commands: the job, or its error on stderr and exit status 2."""
    import sys

    try:
        return load_job(path)
    except JobError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None


def resolve_paths(job: Job, base_dir: Path) -> Job:
    """Relative paths in a job file are relative to the job file's folder."""
    from palm_platform.data.config import resolve_path

    data = job.data.model_copy(update={
        "tokenizer": resolve_path(job.data.tokenizer, base_dir),
        "sources": [s.model_copy(update={"paths": [resolve_path(p, base_dir) for p in s.paths]})
                    for s in job.data.sources],
        "cache_dir": (None if job.data.cache_dir is None
                      else resolve_path(job.data.cache_dir, base_dir)),
        "store": None if job.data.store is None else resolve_path(job.data.store, base_dir),
    })
    local = job.checkpoint.local
    if local is not None and local.directory is not None:  # (None: /dev/shm/palm/<name>)
        local = local.model_copy(update={"directory": resolve_path(local.directory, base_dir)})
    checkpoint = job.checkpoint.model_copy(
        update={"directory": resolve_path(job.checkpoint.directory, base_dir), "local": local}
    )
    run_dir = resolve_path(job.run_dir, base_dir)
    cache = job.train.compile_cache
    train = job.train.model_copy(update={  # "off" is not a path
        "compile_cache": cache if cache in (None, "off") else resolve_path(cache, base_dir)})
    init_from = job.init_from and job.init_from.model_copy(
        update={"checkpoint": resolve_path(job.init_from.checkpoint, base_dir)}
    )
    return job.model_copy(update={"data": data, "checkpoint": checkpoint, "run_dir": run_dir,
                                  "train": train, "init_from": init_from})
