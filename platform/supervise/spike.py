"""Loss-spike detection on the global loss.

Every host sees the same global loss, so every host runs its own detector and reaches the
same verdict without sending a message: the verdict is a pure function of the sequence of
`observe` calls (plain Python floats, sorted medians; no clocks, no randomness).

Rules, over the last `window` good (non-spike) losses, once `min_history` of them exist:
- "ratio":  spike when loss > threshold x median.
- "zscore": spike when loss > median + zscore x robust std. The robust std is estimated
  from successive differences, 1.4826 x MAD(diff(losses)) / sqrt(2), so that the steady fall
  of a training loss does not count as noise (a MAD around the median would, and would hide
  spikes early in training); it is floored at 1% of |median| so that a very flat window does
  not flag ordinary noise. (1.4826 x MAD is the std of a normal; a difference of two
  independent samples has sqrt(2) times their std.)
NaN or Inf is a spike at any time. Only upward jumps count: a falling loss never spikes.
Spike losses never enter the history, so a spike cannot raise the bar for the next one.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any

from palm_platform.supervise.config import SpikeConfig

MAD_TO_STD = 1.4826
MIN_RELATIVE_STD = 0.01
STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Spike:
    """A loss the detector rejected; `limit` is the loss value it had to stay at or under."""

    step: int
    loss: float
    rule: str  # "ratio" | "zscore" | "nonfinite"
    limit: float
    median: float
    scale: float  # ratio: threshold; zscore: robust std; nonfinite: nan
    factor: float  # ratio: threshold; zscore: zscore k; nonfinite: nan

    def describe(self) -> str:
        """e.g. 'loss 9.81 > 3.0 x median 3.10' (no step: the ledger adds it)."""
        if self.rule == "nonfinite":
            return f"loss {self.loss} is not finite"
        if self.rule == "ratio":
            return f"loss {self.loss:.4g} > {self.factor:g} x median {self.median:.4g}"
        return (
            f"loss {self.loss:.4g} > median {self.median:.4g} + {self.factor:g} x robust std "
            f"{self.scale:.3g} (= {self.limit:.4g})"
        )

    def to_dict(self) -> dict:
        return {k: _float_to_json(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Spike:
        return cls(
            step=int(d["step"]),
            rule=str(d["rule"]),
            **{k: _float_from_json(d[k]) for k in ("loss", "limit", "median", "scale", "factor")},
        )


def _float_to_json(value: Any) -> Any:
    """Strict JSON has no NaN/Inf; write them as the strings 'nan', 'inf', '-inf'."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _float_from_json(value: Any) -> float:
    return float(value)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


class SpikeDetector:
    """`observe(step, loss)` once per step, in increasing step order; returns a Spike or None.

    After a rollback to `restore_step`, either `truncate(restore_step)` or, better,
    `load_state_dict` the state saved with that checkpoint (then an in-process rollback and
    a restart from the same checkpoint are identical by construction).
    """

    def __init__(self, cfg: SpikeConfig):
        self.cfg = cfg
        # Keep more than `window` so that `truncate` after a rollback of up to
        # rollback_steps + window steps still leaves a full window behind the restore point.
        self._keep = 2 * cfg.window + cfg.rollback_steps
        self._history: collections.deque[tuple[int, float]] = collections.deque(maxlen=self._keep)
        self._last_step: int | None = None

    # -- verdicts -----------------------------------------------------------------------

    def observe(self, step: int, loss: float) -> Spike | None:
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(
                f"SpikeDetector.observe(step={step}) after step {self._last_step}: steps must "
                f"increase. Fix: after a rollback call truncate(restore_step) or "
                f"load_state_dict(...) before observing the replayed steps"
            )
        self._last_step = step
        loss = float(loss)
        nan = float("nan")
        if not math.isfinite(loss):
            return Spike(step, loss, "nonfinite", nan, nan, nan, nan)
        window = [value for _, value in list(self._history)[-self.cfg.window :]]
        spike = None
        if len(window) >= self.cfg.min_history:
            spike = self._judge(step, loss, window)
        if spike is None:
            self._history.append((step, loss))
        return spike

    def _judge(self, step: int, loss: float, window: list[float]) -> Spike | None:
        median = _median(window)
        if self.cfg.rule == "ratio":
            limit = self.cfg.threshold * median
            if loss > limit:
                return Spike(step, loss, "ratio", limit, median, self.cfg.threshold,
                             self.cfg.threshold)
            return None
        diffs = [b - a for a, b in zip(window, window[1:], strict=False)]
        center = _median(diffs)
        noise = MAD_TO_STD * _median([abs(d - center) for d in diffs]) / math.sqrt(2.0)
        robust_std = max(noise, MIN_RELATIVE_STD * abs(median), 1e-12)
        limit = median + self.cfg.zscore * robust_std
        if loss > limit:
            return Spike(step, loss, "zscore", limit, median, robust_std, self.cfg.zscore)
        return None

    # -- rollback and persistence ---------------------------------------------------------

    def truncate(self, step: int) -> None:
        """Forget losses of steps >= `step` (they are about to be replayed)."""
        kept = [(s, v) for s, v in self._history if s < step]
        self._history = collections.deque(kept, maxlen=self._keep)
        self._last_step = step - 1 if step > 0 else None

    def reset(self) -> None:
        """Forget everything (a new run, or a restore without saved detector state)."""
        self._history.clear()
        self._last_step = None

    @property
    def history(self) -> list[tuple[int, float]]:
        return list(self._history)

    def state_dict(self) -> dict:
        """JSON-serialisable; save it with each checkpoint (history losses are finite)."""
        return {
            "version": STATE_VERSION,
            "last_step": self._last_step,
            "history": [[s, v] for s, v in self._history],
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            history = [(int(s), float(v)) for s, v in state["history"]]
            last = state.get("last_step")
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a SpikeDetector state ({error}): {state!r}") from error
        self._history = collections.deque(history, maxlen=self._keep)
        self._last_step = None if last is None else int(last)
