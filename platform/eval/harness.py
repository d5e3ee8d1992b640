"""A `palm` model for lm-evaluation-harness: its `LM` API over a restored checkpoint.

    loglikelihood          [EOS] + context + continuation, left-truncated to the context;
                           batches of a fixed [B, L+1] shape -> one compiled score step
    loglikelihood_rolling  the harness's own rolling windows (EOS as prefix), scored alike
    generate_until         the model's KV-cache decode (generate.py), cut at `until`

Written for lm-eval 0.4.13 (see `compat_check`); only the public `LM` API is used. One
process, or every host of the job's mesh (`palm eval --cluster`, eval/cluster.py): the
harness's multi-rank path needs torch, so each host runs every request, in the same order,
on the sharded model (one SPMD program), and host 0 reports.
"""

from __future__ import annotations

import importlib.metadata

import numpy as np
from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from palm_platform.eval.generate import Sampling, generate_ids
from palm_platform.eval.placement import LOCAL, Placement
from palm_platform.train.eval_step import make_score_step

WRITTEN_FOR = "0.4"


def compat_check() -> None:
    version = importlib.metadata.version("lm_eval")
    if not version.startswith(WRITTEN_FOR):
        raise RuntimeError(f"palm's harness model was written for lm-eval {WRITTEN_FOR}.x; "
                           f"found {version}. Fix: pip install 'lm-eval=={WRITTEN_FOR}.*'")


class PalmLM(LM):
    def __init__(self, params, config, tokenizer, *, batch_size: int = 16,
                 max_length: int | None = None, placement: Placement = LOCAL):
        super().__init__()
        compat_check()
        self.params, self.config, self.tokenizer = params, config, tokenizer
        self.batch_size = batch_size
        self.max_length = max_length or config.max_seq_len
        self.eos = tokenizer.eos_id
        self._score = make_score_step(config)
        self.placement = placement  # one process, or every host of the job's mesh

    # -- scoring ----------------------------------------------------------------------------

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # Tokenize the whole text and split it where the context ends, so the continuation's
        # tokens are the ones the model would read (trailing spaces move to the continuation).
        spaces = len(context) - len(context.rstrip(" "))
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tokenizer.encode(context + continuation)
        n_context = len(self.tokenizer.encode(context)) if context else 0
        return [self.eos, *whole[:n_context]], whole[n_context:]

    def _score_rows(self, rows: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        """rows: (tokens, n) -> (log-probability of the last n tokens, all of them greedy)."""
        L, B, out = self.max_length, self.batch_size, []
        for start in range(0, len(rows), B):
            chunk = rows[start : start + B]
            tokens = np.full((B, L + 1), self.eos, np.int32)
            mask = np.zeros((B, L), np.float32)
            for r, (ids, n) in enumerate(chunk):
                ids = ids[-(L + 1):]  # keep the end: the continuation and the nearest context
                n = min(n, len(ids) - 1)
                tokens[r, : len(ids)] = ids
                mask[r, len(ids) - 1 - n : len(ids) - 1] = 1.0
            logprob, greedy = self.placement.get(self._score(
                self.params, self.placement.put(tokens), self.placement.put(mask)))
            out += [(float(logprob[r]), bool(greedy[r])) for r in range(len(chunk))]
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        rows = []
        for request in requests:
            context, continuation = request.args
            ctx, cont = self._encode_pair(context, continuation)
            rows.append((ctx + cont, len(cont)))
        return self._score_rows(rows)

    def loglikelihood_rolling(self, requests) -> list[float]:
        windows, owner = [], []
        for i, request in enumerate(requests):
            (text,) = request.args
            for ctx, pred in map(make_disjoint_window, get_rolling_token_windows(
                    self.tokenizer.encode(text), self.eos, self.max_length, 1)):
                windows.append((ctx + pred, len(pred)))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self._score_rows(windows), strict=True):
            totals[i] += logprob
        return totals

    # -- generation -------------------------------------------------------------------------

    def generate_until(self, requests) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        by_settings: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            kwargs = request.args[1]
            key = (int(kwargs.get("max_gen_toks", 64)),
                   float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0)
            by_settings.setdefault(key, []).append(i)
        for (max_new, temperature), indices in by_settings.items():
            prompts = []
            for i in indices:
                ids = [self.eos, *self.tokenizer.encode(requests[i].args[0])]
                prompts.append(ids[-(self.max_length - max_new):])
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                new = generate_ids(
                    self.params,
                    self.config,
                    prompts[start : start + self.batch_size],
                    Sampling(max_new_tokens=max_new, temperature=temperature),
                    self.eos,
                    self.placement,
                )
                for i, ids in zip(chunk, new, strict=True):
                    out[i] = cut_at(
                        self.tokenizer.decode(ids), requests[i].args[1].get("until") or []
                    )
        return out


def cut_at(text: str, until: list[str] | str) -> str:
    """The text before the first stop sequence."""
    for stop in [until] if isinstance(until, str) else until:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text
