"""PaLM §8's memorization test: prompt with the first 50 tokens of a training sequence the
run really trained on, greedy-decode 50, count exact continuations; the same on held-out text.

Which sequences were trained on is index arithmetic, as the data pipeline is: a run consumed
global sequences [0, next_sequence) of its checkpoint's data state, minus the skip ranges
(batches skipped after loss spikes were rolled back, so their updates are gone). The
pipeline, rebuilt from the job (and the run's recorded held-out split), returns exactly
those sequences.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from palm.decode import generate
from palm_platform.eval.generate import raw_key
from palm_platform.eval.placement import LOCAL, Placement
from palm_platform.eval.restore import EvalInputError
from palm_platform.run_dir import RunDir


@dataclass
class Memorization:
    step: int
    prompt_tokens: int
    continuation_tokens: int
    trained: int
    trained_exact: int
    heldout: int
    heldout_exact: int

    @property
    def trained_rate(self) -> float:
        return self.trained_exact / self.trained

    @property
    def heldout_rate(self) -> float | None:
        return self.heldout_exact / self.heldout if self.heldout else None

    def line(self) -> str:
        held = (f"held-out {self.heldout_exact}/{self.heldout} ({self.heldout_rate:.1%})"
                if self.heldout else "held-out: none (the job has no eval: section)")
        return (f"memorization at step {self.step}: {self.trained_exact}/{self.trained} trained "
                f"sequences ({self.trained_rate:.1%}) continued exactly for "
                f"{self.continuation_tokens} tokens after {self.prompt_tokens}; {held}")

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "trained_rate": self.trained_rate,
            "heldout_rate": self.heldout_rate,
        }


def sample_trained_indices(data_state: dict, count: int, seed: int) -> np.ndarray:
    """`count` distinct global sequence indices in [0, next_sequence) outside skip ranges."""
    from palm_platform.data.skips import SkipRanges

    kept = SkipRanges.of_state(data_state).kept_spans(int(data_state["next_sequence"]))
    total = sum(b - a for a, b in kept)
    if total == 0:
        raise EvalInputError(
            "this checkpoint has trained on no sequence yet. Fix: pick a later --step"
        )
    ranks = np.sort(
        np.random.default_rng(seed).choice(total, size=min(count, total), replace=False)
    )
    starts = np.cumsum([0] + [b - a for a, b in kept])
    segment = np.searchsorted(starts, ranks, side="right") - 1
    return np.asarray(
        [kept[s][0] + r - starts[s] for s, r in zip(segment, ranks, strict=True)], np.int64
    )


def _pipeline_and_heldout(run):
    """The run's training pipeline (one process) and its held-out sources, packed."""
    from palm_platform.data import build_pipeline
    from palm_platform.data.heldout_split import split_sources
    from palm_platform.data.packing import PackedSequences

    heldout: dict = {}  # source -> SpanTokens of its held-out documents
    config = run.job.eval

    def source_filter(sources, tokenizer):
        if config is None:
            return sources
        record_path = RunDir(Path(run.run_dir)).eval_split
        recorded = json.loads(record_path.read_text()) if record_path.exists() else None
        split = split_sources(sources, tokenizer.eos_id, config.heldout_fraction,
                              config.split_seed, recorded)
        heldout.update(split.heldout)
        return split.train

    pipeline = build_pipeline(run.job.data, seq_len=run.job.seq_len, base_dir=Path.cwd(),
                              process_index=0, process_count=1, source_filter=source_filter)
    return pipeline, [PackedSequences(tokens, run.job.seq_len) for tokens in heldout.values()]


def sample_heldout(packed: list, count: int, seed: int) -> np.ndarray:
    """Up to `count` held-out sequences [n, L+1], read one by one (never whole sources)."""
    sizes = np.asarray([len(p) for p in packed], np.int64)
    total = int(sizes.sum())
    if total == 0:
        return np.zeros((0, 0), np.int32)
    ranks = np.sort(
        np.random.default_rng(seed).choice(total, size=min(count, total), replace=False)
    )
    starts = np.concatenate([[0], np.cumsum(sizes)])
    which = np.searchsorted(starts, ranks, side="right") - 1
    return np.stack(
        [np.asarray(packed[w][int(r - starts[w])]) for w, r in zip(which, ranks, strict=True)]
    )


def exact_continuations(params, config, sequences_NxS: np.ndarray, prompt: int, continuation: int,
                        batch_size: int, placement: Placement = LOCAL) -> int:
    """How many rows the model continues exactly (greedy) for `continuation` tokens."""
    exact = 0
    for start in range(0, len(sequences_NxS), batch_size):
        rows = sequences_NxS[start : start + batch_size]
        padded = np.concatenate([rows, np.repeat(rows[:1], batch_size - len(rows), axis=0)])
        out = placement.get(generate(params, placement.put(padded[:, :prompt].astype(np.int32)),
                                     placement.put(raw_key(0)), config=config,
                                     max_new_tokens=continuation))
        same = (out[: len(rows), prompt:] == rows[:, prompt : prompt + continuation]).all(axis=1)
        exact += int(same.sum())
    return exact


def memorization(run, count: int, *, prompt_tokens: int = 50, continuation_tokens: int = 50,
                 seed: int = 0, batch_size: int = 16) -> Memorization:
    length = run.job.seq_len + 1
    if prompt_tokens < 1 or continuation_tokens < 1 or prompt_tokens + continuation_tokens > length:
        raise EvalInputError(
            f"the run's sequences have {length} tokens; --prompt-tokens {prompt_tokens} + "
            f"--continuation-tokens {continuation_tokens} must fit. Fix: lower them")
    pipeline, held_packed = _pipeline_and_heldout(run)
    trained = pipeline.sequences(sample_trained_indices(run.data_state, count, seed))
    heldout = sample_heldout(held_packed, count, seed)

    def score(rows) -> int:
        if not len(rows):
            return 0
        return exact_continuations(run.params, run.model_cfg, rows, prompt_tokens,
                                   continuation_tokens, batch_size, run.placement or LOCAL)

    return Memorization(run.step, prompt_tokens, continuation_tokens, len(trained), score(trained),
                        len(heldout), score(heldout))
