"""The job file: one YAML that names the model, topology, data, optimizer, checkpoints, faults.

`load_job(path)` validates it with pydantic and turns every problem into one message that
names the file, the field and the fix. Decisions are made here, when the job is built, not
with `if config.x` inside the train step.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from palm_platform.checkpoint.config import CheckpointConfig
from palm_platform.data.config import DataConfig
from palm_platform.eval.config import EvalConfig
from palm_platform.train.finetune_config import FineTuneOptimizerFields, InitFromConfig

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
            raise ValueError(f"unknown override(s) {unknown}; ModelConfig fields are {sorted(fields)}")
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


class TopologySection(BaseModel):
    """pods x hosts_per_pod x chips_per_host TPU v4 hosts (one pod = one TPU slice)."""

    model_config = STRICT
    accelerator: Literal["tpu-v4"] = Field(default="tpu-v4", description="TPU generation")
    pods: int = Field(ge=1, description="TPU pods (slices), joined over the data-center network")
    hosts_per_pod: int = Field(ge=1, description="TPU VM hosts per pod (v4: 4 chips each)")
    chips_per_host: int = Field(default=4, ge=1, description="chips per host (v4: 4)")
    ici_topology: str | None = Field(
        default=None, description="chips per pod along x,y,z, e.g. 8x16x24 for a 3072-chip pod"
    )
    local: bool = Field(
        default=False,
        description="run on the local fake-TPU Ray cluster (`palm cluster up`): CPU devices",
    )
    min_pods: int | None = Field(
        default=None, ge=1, description="elastic: keep training on as few as this many pods "
        "when slices are lost, and grow back when they return (default: pods, not elastic)")
    resize_check_s: float = Field(
        default=60, gt=0, description="elastic: seconds between checks for returned pods")

    @property
    def chips_per_pod(self) -> int:
        return self.hosts_per_pod * self.chips_per_host

    @property
    def num_hosts(self) -> int:
        return self.pods * self.hosts_per_pod

    @property
    def fewest_pods(self) -> int:
        """The fewest pods the job trains on (`min_pods`, default all of them)."""
        return self.pods if self.min_pods is None else self.min_pods

    @property
    def elastic(self) -> bool:
        return self.fewest_pods < self.pods

    @model_validator(mode="after")
    def _topology_matches_chips(self) -> TopologySection:
        if self.min_pods is not None and self.min_pods > self.pods:
            raise ValueError(f"min_pods={self.min_pods} exceeds pods={self.pods}; set "
                             f"topology.min_pods between 1 and {self.pods}")
        if self.ici_topology is not None:
            dims = self.ici_topology.lower().split("x")
            if len(dims) != 3 or not all(d.isdigit() and int(d) > 0 for d in dims):
                raise ValueError(f"ici_topology {self.ici_topology!r} is not AxBxC")
            chips = math.prod(int(d) for d in dims)
            if chips != self.chips_per_pod:
                raise ValueError(
                    f"ici_topology {self.ici_topology} has {chips} chips but hosts_per_pod x "
                    f"chips_per_host = {self.hosts_per_pod} x {self.chips_per_host} = "
                    f"{self.chips_per_pod}; make them agree"
                )
        return self


class MeshSection(BaseModel):
    model_config = STRICT
    model: int = Field(default=1, ge=1, description="tensor-parallel degree inside a pod")
    cross_pod_dtype: Literal["float32", "bfloat16"] = Field(
        default="float32", description="gradient dtype on the data-center network between pods"
    )


class BatchPhase(BaseModel):
    model_config = STRICT
    sequences: int = Field(ge=1, description="global batch size in sequences")
    until_step: int | None = Field(default=None, ge=1, description="last phase: omit")


class TrainSection(BaseModel):
    model_config = STRICT
    steps: int = Field(ge=1, description="total optimizer steps")
    seq_len: int | None = Field(default=None, ge=2, description="tokens per sequence; default the model's")
    batch_schedule: list[BatchPhase] = Field(
        min_length=1, description="global batch size by step (PaLM 540B: 512 -> 1024 -> 2048)"
    )
    microbatch_sequences: int | None = Field(
        default=None, ge=1, description="sequences per gradient-accumulation microbatch (global)"
    )
    seed: int = Field(default=0, ge=0, description="parameter initialisation seed")
    compile_cache: str | None = Field(
        default=None, description="JAX persistent compilation cache shared by every host and "
        "restart: a local path or gs://bucket/path; default RUN_DIR/NAME/compile-cache; 'off': none"
    )

    @field_validator("batch_schedule")
    @classmethod
    def _phases_in_order(cls, phases: list[BatchPhase]) -> list[BatchPhase]:
        ends = [p.until_step for p in phases]
        if ends[-1] is not None or any(e is None for e in ends[:-1]):
            raise ValueError("every phase but the last needs until_step; the last has none")
        if any(a >= b for a, b in zip(ends[:-2], ends[1:-1], strict=False)):
            raise ValueError(f"until_step values must increase, got {ends[:-1]}")
        return phases

    def batch_size_at(self, step: int) -> int:
        for phase in self.batch_schedule:
            if phase.until_step is None or step < phase.until_step:
                return phase.sequences
        raise AssertionError("unreachable: the last phase has no end")


class OptimizerSection(FineTuneOptimizerFields):
    """PaLM §5: Adafactor without factorisation (Adam with parameter scaling); the schedule,
    warm-up and frozen-group fields come from `FineTuneOptimizerFields`."""

    model_config = STRICT
    peak_learning_rate: float = Field(default=1e-2, gt=0, description="lr for the first steps")
    constant_steps: int = Field(
        default=10_000, ge=1, description="lr is constant this long, then 1/sqrt(step)"
    )
    beta1: float = Field(default=0.9, ge=0, lt=1, description="momentum")
    second_moment_exponent: float = Field(
        default=0.8, gt=0, le=1, description="beta2 = 1 - step^-exponent"
    )
    clip_global_norm: float = Field(default=1.0, gt=0, description="gradient global-norm clip")
    clip_update_rms: float = Field(default=1.0, gt=0, description="Adafactor update clipping")
    weight_decay: Literal["lr_squared", "none"] = Field(
        default="lr_squared", description="PaLM: dynamic weight decay lr^2"
    )


class SpikeSection(BaseModel):
    """Loss-spike detection and the rollback + data-skip remedy (PaLM §5.1).

    Rules (see `palm_platform.supervise.spike`): "zscore" flags loss > median + zscore x
    robust std (1.4826 x MAD) of the last `window` good losses; "ratio" flags loss >
    threshold x median. NaN or Inf is always a spike. Recurrence: a spike within
    `recurrence_steps` of an earlier rolled-back spike widens the skip (x2 per earlier
    one) or stops the run (`on_recurrence`); `max_rollbacks` such rollbacks, then stop.
    """

    model_config = STRICT
    rule: Literal["zscore", "ratio"] = Field(
        default="zscore",
        description="zscore: loss > median + zscore x robust std; ratio: loss > threshold x median",
    )
    window: int = Field(default=100, ge=5, description="steps of loss history the rule looks at")
    min_history: int = Field(
        default=10, ge=2, description="good losses needed before a verdict (NaN/Inf: always)"
    )
    threshold: float = Field(default=3.0, gt=1, description="rule ratio: loss > threshold x median")
    zscore: float = Field(
        default=6.0, gt=0, description="rule zscore: loss > median + zscore x robust std (MAD)"
    )
    rollback_steps: int = Field(default=100, ge=0, description="restore at least this far back")
    skip_batches: int = Field(default=300, ge=1, description="batches skipped from the spike on")
    recurrence_steps: int = Field(
        default=500,
        ge=0,
        description="a spike within this many steps of an earlier rolled-back spike recurs",
    )
    on_recurrence: Literal["widen", "stop"] = Field(
        default="widen",
        description="widen: skip x2 per earlier nearby rollback; stop: stop the run with a report",
    )
    max_rollbacks: int = Field(
        default=5,
        ge=0,
        description="rollbacks for spikes within recurrence_steps of each other; one more stops "
        "the run with a report (0: stop at the first spike)",
    )

    @model_validator(mode="after")
    def _history_fits_window(self) -> SpikeSection:
        if self.min_history > self.window:
            raise ValueError(
                f"min_history={self.min_history} exceeds window={self.window}, so no verdict "
                f"could ever be reached; set min_history <= {self.window}"
            )
        return self


class FaultInjection(BaseModel):
    """One fault to inject; each fires at most once per run, restarts included."""

    model_config = STRICT
    kind: Literal["kill_host", "hang_host", "poison_batches", "damage_checkpoint"] = Field(
        description="kill_host: SIGKILL the worker; hang_host: block it forever; poison_batches: "
        "replace the data of `steps` batches from `step` with random tokens; damage_checkpoint: "
        "truncate a file of the newest checkpoint"
    )
    step: int = Field(ge=0, description="fires at the first step >= this one that the run reaches")
    host: int = Field(
        default=0, ge=0, description="global host (worker) index that acts (poison: every host)"
    )
    steps: int = Field(default=1, ge=1, description="poison_batches: how many batches (steps)")


class FaultsSection(BaseModel):
    model_config = STRICT
    max_restarts: int = Field(default=3, ge=0, description="worker-group restarts before failing")
    hang_timeout_s: float = Field(default=300, gt=0, description="no step for this long = hang")
    init_timeout_s: float = Field(default=300, gt=0, description="jax.distributed start-up limit")
    spike: SpikeSection = Field(default_factory=SpikeSection)
    inject: list[FaultInjection] = Field(default_factory=list, description="faults to inject")


class MetricsSection(BaseModel):
    model_config = STRICT
    wandb_project: str = Field(default="palm-platform", description="W&B project")
    wandb_entity: str | None = Field(default=None, description="W&B entity (team)")
    wandb_mode: Literal["offline", "online", "disabled"] | None = Field(
        default=None, description="default: $WANDB_MODE, else offline"
    )
    wandb_replay: Literal["xaxis", "rewind", "fork"] = Field(
        default="xaxis", description="how W&B shows steps replayed after a rollback or restart: "
        "xaxis (plotted against train/step, works offline and on any server), rewind or fork "
        "(W&B server features, online only; offline falls back to xaxis)"
    )
    log_every: int = Field(default=1, ge=1, description="steps between progress log lines")
    check_pods_identical: bool = Field(
        default=False, description="each step, compare every pod's copy of the parameters "
        "bitwise (a checksum all-gathered over pods; for tests and the local job)"
    )


class Job(BaseModel):
    model_config = STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="run name")
    model: ModelSection
    topology: TopologySection
    mesh: MeshSection = Field(default_factory=MeshSection)
    train: TrainSection
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    data: DataConfig = Field(default_factory=DataConfig)
    checkpoint: CheckpointConfig
    faults: FaultsSection = Field(default_factory=FaultsSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    eval: EvalConfig | None = Field(
        default=None, description="held-out eval during training (none: nothing held out)"
    )
    init_from: InitFromConfig | None = Field(
        default=None, description="fine-tuning: start from another run's checkpoint"
    )
    run_dir: str = Field(default="runs", description="parent of this job's run folder")

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
            from palm_platform.elastic import check_pod_counts

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
        got = "" if e["type"] == "missing" or isinstance(value, dict) else f" (got {short_repr(value)})"
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
        "cache_dir": None if job.data.cache_dir is None else resolve_path(job.data.cache_dir, base_dir),
    })
    checkpoint = job.checkpoint.model_copy(
        update={"directory": resolve_path(job.checkpoint.directory, base_dir)}
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


if __name__ == "__main__":  # `python -m palm_platform.job JOB.yaml`: validate only, exit 2 if bad
    import sys

    load_job_or_exit(sys.argv[1])
    print(f"{sys.argv[1]}: valid")
