"""Statistics of a shifted test set (intervals, paired flips, McNemar) and the metric table on top.

The metric table (:data:`METRICS`) is what results, text tables and leaderboards are built from.

* **Intervals.** 95% Wilson score intervals for top-1 (closed form; better coverage than the
  normal approximation near 0 and 1, and never outside [0, 1]).
* **Pairs.** A sample ``{shift}/{class:04d}/{index:02d}`` was generated from the same noise as
  ``base/{class:04d}/{index:02d}`` (its *twin*). Over the pairs where both are present:
  ``flip_rate`` = P(twin right, shifted wrong), ``reverse_flip_rate`` = P(twin wrong, shifted
  right), and McNemar's exact test (two-sided binomial on the discordant pairs) says whether
  the shift changed accuracy beyond chance.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .layout import twin_key

__all__ = ["METRICS", "Metric", "ShiftContext", "ShiftPredictions", "Z95", "mcnemar_exact", "paired_flips",
           "per_class_accuracy", "rankable_metrics", "register_metric", "wilson_interval"]

#: Two-sided 95% normal quantile.
Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; ``(0, 1)`` when ``n == 0``."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the interval contains p; clamp float rounding at the ends (e.g. 0 correct gives a lower bound of 0)
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs (1.0 when none)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    log_half_n = n * math.log(0.5)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top) * sum(math.exp(v - top) for v in logs)
    return min(1.0, 2.0 * tail)


def paired_flips(twin_correct: Sequence[bool], shifted_correct: Sequence[bool]) -> dict:
    """Flip statistics over aligned pairs (twin in base, sample under the shift)."""
    t = np.asarray(twin_correct, dtype=bool)
    s = np.asarray(shifted_correct, dtype=bool)
    n = int(t.size)
    b = int((t & ~s).sum())  # right on the twin, wrong under the shift
    c = int((~t & s).sum())
    return {
        "pairs": n,
        "flips": b,
        "reverse_flips": c,
        "flip_rate": b / n if n else None,
        "reverse_flip_rate": c / n if n else None,
        "paired_base_top1": float(t.mean()) if n else None,
        "paired_top1": float(s.mean()) if n else None,
        "mcnemar_p": mcnemar_exact(b, c),
    }


def per_class_accuracy(labels: np.ndarray, correct: np.ndarray, num_classes: int) -> tuple[list, list]:
    """``(n, accuracy)`` per class index of the label space (accuracy ``None`` where n == 0)."""
    labels = np.asarray(labels, dtype=np.int64)
    n = np.bincount(labels, minlength=num_classes)
    right = np.bincount(labels, weights=np.asarray(correct, dtype=np.float64), minlength=num_classes)
    acc = [float(r / k) if k else None for r, k in zip(right.tolist(), n.tolist())]
    return n.tolist(), acc


# ---------------------------------------------------------------------- predictions
@dataclass
class ShiftPredictions:
    """One shift's predictions: keys, true labels, top-k predicted labels (``-1`` = none), and the
    model's probability of its top-1 label where it gives one (softmax over the classes it may predict)."""

    keys: list[str]
    labels: np.ndarray
    topk: np.ndarray  # (n, k) label-space indices, best first
    confidence: np.ndarray | None = None  # (n,) float32, or None: not given (scored predictions)

    def sorted(self) -> ShiftPredictions:
        order = sorted(range(len(self.keys)), key=self.keys.__getitem__)
        return ShiftPredictions([self.keys[i] for i in order], self.labels[order], self.topk[order],
                                None if self.confidence is None else self.confidence[order])

    @property
    def correct(self) -> np.ndarray:
        return self.topk[:, 0] == self.labels

    @property
    def correct5(self) -> np.ndarray | None:
        if self.topk.shape[1] < 5:
            return None
        return (self.topk[:, :5] == self.labels[:, None]).any(axis=1)


class ShiftContext:
    """What a metric sees: one shift's predictions, and the base shift's where there is one."""

    def __init__(self, shift_id: str, predictions: ShiftPredictions, base: ShiftPredictions | None):
        self.shift_id = shift_id
        self.p = predictions
        self.base = base if shift_id != "base" else None

    @functools.cached_property
    def pair_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """``(positions in this shift, positions of their twins in base)`` of the samples whose base twin
        was evaluated (empty for base itself, or without base)."""
        if self.base is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        index = {k: i for i, k in enumerate(self.base.keys)}
        mine, theirs = [], []
        for i, k in enumerate(self.p.keys):
            j = index.get(twin_key(k))
            if j is not None:
                mine.append(i)
                theirs.append(j)
        return np.asarray(mine, np.int64), np.asarray(theirs, np.int64)

    @functools.cached_property
    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(twin correct, shifted correct, labels)`` over the samples whose base twin was evaluated."""
        mine, theirs = self.pair_positions
        return self.base.correct[theirs], self.p.correct[mine], self.p.labels[mine]

    @functools.cached_property
    def flips(self) -> dict:
        return paired_flips(*self.pairs[:2])


# ---------------------------------------------------------------------- the metric table
@dataclass(frozen=True)
class Metric:
    """One per-shift metric: how it is computed, read and ranked.

    Attributes:
        name: its key in ``results["shifts"][shift]``.
        label: its column header in tables.
        fmt: ``"pct"`` (a fraction shown in %), ``"p"`` (a p-value) or ``"count"``.
        higher_is_better: ``True``/``False`` for metrics a leaderboard can rank by, ``None`` otherwise.
        paired: computed over (base twin, shifted sample) pairs.
        needs_base: only defined for shifts other than base, when base was evaluated.
        compute: ``ShiftContext -> {field: value}``: the metric and its companion fields.
        description: one line for help texts.
        interval: the field holding its 95% interval, if any.
    """

    name: str
    label: str
    fmt: str
    higher_is_better: bool | None
    paired: bool
    needs_base: bool
    compute: Callable[[ShiftContext], dict]
    description: str
    interval: str | None = None

    @property
    def rankable(self) -> bool:
        return self.higher_is_better is not None

    def format(self, value) -> str:
        """The value as tables show it (``-`` when not measured)."""
        if value is None:
            return "-"
        if self.fmt == "pct":
            return f"{100 * value:.1f}"
        if self.fmt == "p":
            return f"{value:.2g}"
        return str(value)

    def worst(self, values: dict[str, float]) -> str:
        sign = 1 if self.higher_is_better else -1
        return min(values, key=lambda k: (sign * values[k], k))


#: Every per-shift metric, in table order. Add one with :func:`register_metric`.
METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric, *, overwrite: bool = False) -> Metric:
    """Add a metric to :data:`METRICS` (results, text tables and leaderboards then show it).

    Raises:
        ValueError: the name is taken (pass ``overwrite=True`` to replace it).
    """
    if metric.name in METRICS and not overwrite:
        raise ValueError(f"a metric named {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


def rankable_metrics() -> list[str]:
    """Metrics a leaderboard can rank by."""
    return [m.name for m in METRICS.values() if m.rankable]


def _n(ctx: ShiftContext) -> dict:
    return {"n": len(ctx.p.keys)}


def _top1(ctx: ShiftContext) -> dict:
    n, right = len(ctx.p.keys), int(ctx.p.correct.sum())
    return {"correct": right, "top1": right / n if n else None, "top1_ci": list(wilson_interval(right, n))}


def _top5(ctx: ShiftContext) -> dict:
    c5 = ctx.p.correct5
    return {"top5": float(c5.mean()) if c5 is not None and len(c5) else None}


def _drop(ctx: ShiftContext) -> dict:
    if ctx.base is None or not len(ctx.base.keys) or not len(ctx.p.keys):
        return {"drop_vs_base": None}
    base_top1 = int(ctx.base.correct.sum()) / len(ctx.base.keys)
    return {"drop_vs_base": base_top1 - int(ctx.p.correct.sum()) / len(ctx.p.keys)}


_UNPAIRED = {"pairs": None, "flips": None, "reverse_flips": None, "flip_rate": None, "reverse_flip_rate": None,
             "paired_base_top1": None, "paired_top1": None, "mcnemar_p": None}


def _paired(ctx: ShiftContext) -> dict:
    """Every paired statistic at once (computed once per shift, see :attr:`ShiftContext.flips`)."""
    return dict(_UNPAIRED) if ctx.base is None else dict(ctx.flips)


for _metric in (
    Metric("n", "n", "count", None, False, False, _n, "samples evaluated"),
    Metric("top1", "top-1", "pct", True, False, False, _top1, "top-1 accuracy", interval="top1_ci"),
    Metric("top5", "top-5", "pct", True, False, False, _top5, "top-5 accuracy"),
    Metric("drop_vs_base", "drop", "pct", False, False, True, _drop, "base top-1 minus this shift's top-1"),
    Metric("flip_rate", "flip", "pct", False, True, True, _paired,
           "P(base twin right, shifted sample wrong)"),
    Metric("reverse_flip_rate", "rev.flip", "pct", None, True, True, _paired,
           "P(base twin wrong, shifted sample right)"),
    Metric("mcnemar_p", "McNemar p", "p", None, True, True, _paired,
           "McNemar's exact two-sided test on the discordant pairs"),
):
    register_metric(_metric)
