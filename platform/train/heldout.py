"""Held-out loss and bits-per-byte during training: a hook the train loop calls each step.

    build_pipeline(..., source_filter=evaluator.training_sources)
        each source -> (training part without the held-out documents, held-out tokens)
    evaluator.maybe_run(step, state, sink, goodput)    every `eval.every_steps` and at the end
        per source: fixed held-out sequences [S, L+1] -> batches [B, L+1] (rows beyond S
        weighted 0) -> eval_step on the train mesh -> sum of nats, tokens; bytes from the
        tokenizer -> `eval` record: eval/<source>/loss, eval/<source>/bpb

Every host runs the same eval on its share of each batch (the loop is SPMD); the eval step is
compiled once: every source and every eval use the same [B, L+1] shape.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import jax
import numpy as np

from palm_platform.data.global_array import process_blocks, to_global_array
from palm_platform.data.heldout_split import read_recorded_split, split_sources, write_split
from palm_platform.data.packing import PackedSequences
from palm_platform.data.pipeline import block_rows
from palm_platform.job.eval import EvalConfig
from palm_platform.mesh import batch_sharding
from palm_platform.train.eval_step import make_eval_step

log = logging.getLogger("palm")

_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def bytes_per_token(tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for (control pieces: 0), for bits-per-byte."""
    table = np.zeros(tokenizer.vocab_size, np.int64)
    for i in range(tokenizer.vocab_size):
        piece = tokenizer.id_to_piece(i)
        if i in (tokenizer.eos_id, tokenizer.pad_id) or (
            piece.startswith("<") and piece.endswith(">") and not _BYTE_PIECE.match(piece)
        ):
            continue
        table[i] = 1 if _BYTE_PIECE.match(piece) else len(piece.replace("\u2581", " ").encode())
    return table


class NoEval:
    """A job without an `eval:` section: nothing held out, nothing run."""

    def training_sources(self, sources, tokenizer):
        return sources

    def is_due(self, step: int) -> bool:
        return False

    def maybe_run(self, step: int, state, sink, goodput, *, final: bool = False) -> None:
        return None


class HeldOutEvaluator:
    def __init__(self, config: EvalConfig, *, run_dir: Path, mesh, model_cfg, param_shardings,
                 seq_len: int, batch_sequences: int, process_index: int, process_count: int):
        replicas = mesh.shape["pod"] * mesh.shape["data"]
        if batch_sequences % replicas:
            raise ValueError(
                f"eval.batch_sequences={batch_sequences} must be a multiple of pods x data = "
                f"{replicas}. Fix: set eval.batch_sequences")
        self.config, self.run_dir, self.mesh = config, Path(run_dir), mesh
        self.seq_len, self.batch = seq_len, batch_sequences
        self.process_index, self.process_count = process_index, process_count
        self.step_fn = make_eval_step(model_cfg, mesh, param_shardings)
        self.sets: dict[str, np.ndarray] = {}  # source -> held-out sequences [S, L+1]
        self.last_step: int | None = None

    def training_sources(self, sources, tokenizer):
        """Split the held-out documents off (the pipeline trains on what this returns)."""
        recorded = read_recorded_split(self.run_dir, self.process_index)
        split = split_sources(sources, tokenizer.eos_id, self.config.heldout_fraction,
                              self.config.split_seed, recorded)
        if self.process_index == 0:
            write_split(self.run_dir, split.record)
        self.bytes_table = bytes_per_token(tokenizer)
        for name, tokens in split.heldout.items():
            packed = PackedSequences(tokens, self.seq_len)
            count = min(len(packed), self.config.sequences)
            if count == 0:
                log.warning("eval: source %r has no held-out sequence of %d tokens; not evaluated",
                            name, self.seq_len + 1)
                continue
            self.sets[name] = np.stack([packed[i] for i in range(count)]).astype(np.int32)
        return split.train

    def is_due(self, step: int) -> bool:
        """Whether `maybe_run(step, ...)` evaluates (the loop then reads step `step` at once)."""
        return step % self.config.every_steps == 0 and step != self.last_step and bool(self.sets)

    def maybe_run(self, step: int, state, sink, goodput, *, final: bool = False) -> None:
        due = step % self.config.every_steps == 0 or final
        if due and step != self.last_step and self.sets:
            self._run(step, state, sink, goodput)
        if final and self.sets:  # every source and every eval share one compiled step
            compiles = self.step_fn._cache_size()
            if compiles > 1:  # any host: a shape or sharding differs between evals
                log.warning("host %d/%d: held-out eval step compiled %d times in this process "
                            "(expected once: every eval set has the same shape)",
                            self.process_index, self.process_count, compiles)
            elif self.process_index == 0:  # the same line from every host says nothing more
                log.info("host %d/%d: held-out eval step compiled %d time(s) in this process",
                         self.process_index, self.process_count, compiles)

    def _run(self, step: int, state, sink, goodput) -> None:
        with goodput.phase("eval"):
            results = {name: self.evaluate(state.params, seqs) for name, seqs in self.sets.items()}
        self.last_step = step
        fields = {}
        for name, (loss, bpb) in results.items():
            fields[f"eval/{name}/loss"] = round(loss, 4)
            fields[f"eval/{name}/bpb"] = round(bpb, 4)
        sink.event("eval", step, **fields)

    def evaluate(self, params, sequences_SxL1: np.ndarray) -> tuple[float, float]:
        """(mean next-token loss in nats, bits per byte) over held-out sequences."""
        nats = tokens = 0.0
        sharding = batch_sharding(self.mesh)
        mine = block_rows(*process_blocks(sharding), self.batch)
        for start in range(0, len(sequences_SxL1), self.batch):
            rows = sequences_SxL1[start : start + self.batch]
            padded = np.zeros((self.batch, self.seq_len + 1), np.int32)
            weights = np.zeros((self.batch, self.seq_len), np.float32)
            padded[: len(rows)], weights[: len(rows)] = rows, 1.0
            out = self.step_fn(params, to_global_array(padded[mine], sharding),
                               to_global_array(weights[mine], sharding))
            out = jax.device_get(out)
            nats, tokens = nats + float(out["nats"]), tokens + float(out["tokens"])
        target_bytes = int(self.bytes_table[sequences_SxL1[:, 1:]].sum())
        return nats / max(tokens, 1.0), nats / math.log(2) / max(target_bytes, 1)


def build_evaluator(job, run_dir: Path, mesh, model_cfg, param_shardings):
    """The job's held-out evaluator, or NoEval without an `eval:` section."""
    config = getattr(job, "eval", None)
    if config is None:
        return NoEval()
    batch = config.batch_sequences or job.train.batch_schedule[0].sequences
    return HeldOutEvaluator(config, run_dir=run_dir, mesh=mesh, model_cfg=model_cfg,
                            param_shardings=param_shardings, seq_len=job.seq_len,
                            batch_sequences=batch, process_index=jax.process_index(),
                            process_count=jax.process_count())
