"""Accuracy with intervals, paired flips and McNemar's test: the statistics of a shifted test set.

* **Intervals.** 95% Wilson score intervals for top-1 (closed form; better coverage than the
  normal approximation near 0 and 1, and never outside [0, 1]).
* **Pairs.** A sample ``{shift}/{class:04d}/{index:02d}`` was generated from the same noise as
  ``base/{class:04d}/{index:02d}`` (its *twin*). Over the pairs where both are present:
  ``flip_rate`` = P(twin right, shifted wrong), ``reverse_flip_rate`` = P(twin wrong, shifted
  right), and McNemar's exact test (two-sided binomial on the discordant pairs) says whether
  the shift changed accuracy beyond chance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["Z95", "mcnemar_exact", "paired_flips", "per_class_accuracy", "wilson_interval"]

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
