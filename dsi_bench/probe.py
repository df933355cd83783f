"""Find the shifts that break a classifier: an adaptive, paired search over natural-language shifts.

``probe(classifier, phrases, data, budget=...)`` tries many phrases (the built-in vocabulary of
:mod:`dsi_bench.phrases`, or your own) and spends a budget of generated images where they decide
which phrases hurt the classifier most.

**Paired design.** A phrase's n-th observation is the pair (base twin, shifted sample) of the n-th
*unit* ``(class, index)``: the same class, index and seed, so the same starting noise. Its value is
``D = [twin right] - [shifted right]`` in {-1, 0, 1}; the phrase's *paired drop* is the mean of D
(the paired top-1 of the twins minus that of the shifted samples). Every phrase walks the same unit
sequence (classes drawn uniformly at random with a seeded generator, each class's indices in order),
so base twins are generated once and shared by every phrase.

**Anytime-valid intervals.** Each phrase's drop has a confidence *sequence*: an interval valid at
every sample size at once, so it stays valid when the number of pairs is chosen from the data, as
here. We use the hedged capital process with predictable plug-in bets of Waudby-Smith & Ramdas,
"Estimating means of bounded random variables by betting" (JRSS-B 2023), on ``(D + 1) / 2`` in
[0, 1]: variance-adaptive (a phrase whose pairs rarely disagree gets a narrow interval quickly) and
never below the nominal coverage. Fixed-sample tests (McNemar's, Wilson intervals) are not valid
after adaptive stopping, so the probe reports none (``mcnemar_p`` is ``None`` in its results).

**Adaptive allocation: racing for the top k.** Every phrase starts with ``initial`` pairs. After
each round, with simultaneous intervals (level ``alpha / m`` each, Bonferroni over the m phrases), a
phrase is *accepted* when fewer than k others could be worse (their upper bound reaches its lower
bound), and *rejected* when at least k others are surely worse (their lower bound is above its upper
bound); the others stay active and get ``step`` more pairs each (widest intervals first when the
budget runs short). The probe stops when the top k are separated (every accepted-or-leading phrase's
lower bound is above every other's upper bound, up to ``tolerance``), when no active phrase can take
more pairs, or when the budget is spent. This is successive accepts and rejects (Bubeck, Wang and
Viswanathan, ICML 2013) with confidence sequences in place of fixed-time bounds.

**Error control: Holm.** Each phrase's one-sided p-value (H0: the phrase does not lower accuracy,
mean D <= 0) is anytime-valid (1 / the running maximum of a test martingale, by Ville's inequality).
The p-values are adjusted with Holm's step-down method by default, which bounds the probability of
reporting *any* harmless phrase as harmful (family-wise error) under arbitrary dependence between the
phrases' tests, which is what we have: phrases share base twins and the allocation couples them.
Benjamini-Hochberg (``correction="bh"``, false discovery rate) is offered for long exploratory lists,
but its guarantee needs positive dependence (PRDS), which the shared twins make plausible, not certain.

What the guarantee does not cover: a phrase's pairs can reuse units another phrase has already
observed, so the decision to give it more pairs may depend on twins it has not yet been scored on.
The benchmark (``benchmarks/bench_probe.py``) measures the false discovery proportion this leaves on
the embedded world against exhaustive evaluation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DsiBenchError, SpecError

__all__ = ["CORRECTIONS", "ProbeResult", "RaceStatus", "UnitSequence", "adjust_p", "confidence_sequence",
           "one_sided_p", "probe", "race_status", "resolve_phrases"]

logger = logging.getLogger(__name__)

#: Multiple-testing corrections :func:`adjust_p` knows.
CORRECTIONS = ("holm", "bh", "none")

#: Bets are capped at this fraction of the largest safe bet (Waudby-Smith & Ramdas suggest 1/2 or 3/4; 3/4
#: gave 10-15 % narrower intervals at 20-60 pairs in our measurements, and keeps the capital positive).
_BET_CAP = 0.75
#: Grid of candidate means (on [0, 1]) the confidence sequences are computed on: 0.001 of a drop apart.
_GRID = np.linspace(0.0, 1.0, 2001)
STATE_NAME = "probe-state.json"


# ---------------------------------------------------------------------- statistics
def _unit(d) -> np.ndarray:
    """Paired differences in [-1, 1] -> [0, 1]."""
    x = (np.asarray(d, dtype=np.float64) + 1.0) / 2.0
    if x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError("paired differences must lie in [-1, 1]")
    return x


def _bets(x: np.ndarray, alpha: float) -> np.ndarray:
    """Predictable plug-in bets lambda_1..lambda_n (each uses only the observations before it)."""
    n = x.size
    t = np.arange(1, n + 1, dtype=np.float64)
    mu = (0.5 + np.cumsum(x)) / (t + 1)
    var = (0.25 + np.cumsum((x - mu) ** 2)) / (t + 1)
    var_before = np.concatenate([[0.25], var[:-1]])
    return np.sqrt(2 * math.log(2 / alpha) / (var_before * t * np.log1p(t)))


def confidence_sequence(d: Sequence[float], alpha: float = 0.05) -> tuple[float, float]:
    """The anytime-valid ``1 - alpha`` interval for the mean of paired differences in [-1, 1].

    The running intersection, over every prefix of ``d``, of the hedged betting confidence sequence
    (Waudby-Smith & Ramdas 2023, predictable plug-in bets capped at 3/4): with probability at least
    ``1 - alpha`` it contains the mean at every sample size simultaneously.

    Returns:
        ``(lower, upper)`` on the scale of ``d``; ``(-1, 1)`` for no data.
    """
    x = _unit(d)
    if not x.size:
        return -1.0, 1.0
    lam = _bets(x, alpha)[:, None]
    m = _GRID[None, :]
    with np.errstate(divide="ignore"):
        up = np.minimum(lam, _BET_CAP / m)
        down = np.minimum(lam, _BET_CAP / (1 - m))
    log_up = np.cumsum(np.log1p(up * (x[:, None] - m)), axis=0)
    log_down = np.cumsum(np.log1p(-down * (x[:, None] - m)), axis=0)
    capital = math.log(0.5) + np.maximum(log_up, log_down)
    inside = np.logical_and.accumulate(capital < math.log(1 / alpha), axis=0)[-1]
    if not inside.any():  # the grid's resolution: fall back to the closest point
        mean = float(x.mean())
        return 2 * mean - 1, 2 * mean - 1
    kept = _GRID[inside]
    step = _GRID[1] - _GRID[0]
    lo, hi = max(0.0, kept[0] - step), min(1.0, kept[-1] + step)  # conservative by one grid step
    return 2 * lo - 1, 2 * hi - 1


def one_sided_p(d: Sequence[float], alpha: float = 0.05) -> float:
    """Anytime-valid p-value of H0: mean(d) <= 0 (the phrase does not lower accuracy).

    ``1 / max_t K_t``, where ``K_t`` is the capital of betting that ``d`` is positive (a nonnegative
    supermartingale under H0), so ``P(p <= a) <= a`` at any data-dependent stopping time (Ville). The
    bets are tuned for a level-``alpha`` test; any tuning is valid.
    """
    x = _unit(d)
    if not x.size:
        return 1.0
    lam = np.minimum(_bets(x, alpha), _BET_CAP / 0.5)
    log_k = np.cumsum(np.log1p(lam * (x - 0.5)))
    return float(min(1.0, math.exp(-max(0.0, float(log_k.max())))))


def adjust_p(p: Sequence[float], method: str = "holm") -> np.ndarray:
    """Adjusted p-values: ``holm`` (family-wise error, any dependence), ``bh`` (Benjamini-Hochberg false
    discovery rate, independent or positively dependent tests) or ``none``.

    Raises:
        SpecError: an unknown method.
    """
    if method not in CORRECTIONS:
        raise SpecError(f"unknown correction {method!r}; choose one of {', '.join(CORRECTIONS)}")
    p = np.asarray(p, dtype=np.float64)
    m = p.size
    if m == 0 or method == "none":
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        adjusted = np.maximum.accumulate(ranked * (m - np.arange(m)))
    else:
        adjusted = np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(1.0, adjusted)
    return out


# ---------------------------------------------------------------------- racing
@dataclass
class RaceStatus:
    """Where a race stands: per arm its mean, simultaneous interval and verdict; whether the top k are separated."""

    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    accepted: np.ndarray  # surely among the k worst
    rejected: np.ndarray  # surely not
    separated: bool
    top: list[int]  # the k arms with the largest mean drop, largest first

    @property
    def active(self) -> np.ndarray:
        return ~(self.accepted | self.rejected)


def race_status(observations: Sequence[Sequence[float]], k: int, alpha: float, tolerance: float = 0.0,
                intervals: Sequence[tuple[float, float]] | None = None) -> RaceStatus:
    """Successive accepts and rejects for the k arms with the largest mean (see the module docs).

    Args:
        observations: per arm, its paired differences so far.
        k: how many of the largest means to identify.
        alpha: the error level; each arm's interval has level ``alpha / len(observations)``.
        tolerance: the top k count as separated when their lower bounds are within this of the others'
            upper bounds (0: strictly above).
        intervals: the simultaneous intervals, when already computed.
    """
    m = len(observations)
    k = min(k, m)
    mean = np.array([float(np.mean(o)) if len(o) else 0.0 for o in observations])
    if intervals is None:
        intervals = [confidence_sequence(o, alpha / m) for o in observations]
    lower = np.array([iv[0] for iv in intervals])
    upper = np.array([iv[1] for iv in intervals])
    # Ties on the mean go to the tighter lower bound, then to list order.
    order = sorted(range(m), key=lambda i: (-mean[i], -lower[i], i))
    top = order[:k]
    accepted = np.zeros(m, bool)
    rejected = np.zeros(m, bool)
    for i in range(m):
        could_be_worse = int((upper > lower[i]).sum()) - int(upper[i] > lower[i])
        surely_worse = int((lower > upper[i]).sum())
        accepted[i] = could_be_worse <= k - 1
        rejected[i] = surely_worse >= k
    rest = [j for j in range(m) if j not in top]
    separated = (not rest) or bool(lower[top].min() >= upper[rest].max() - tolerance)
    return RaceStatus(mean, lower, upper, accepted, rejected, separated, top)


class UnitSequence:
    """The units ``(class, index)`` every phrase walks through, in the same order.

    Each unit's class is drawn uniformly at random (a seeded generator: the sequence is a pure function of
    ``classes``, ``seed`` and ``capacity``), its index is the next unused one of that class. With
    ``capacity`` (a finite pool, e.g. images generated once), classes whose indices are used up are
    no longer drawn and the sequence ends when every class is.
    """

    def __init__(self, classes: Sequence[int], seed: int = 0, capacity: int | None = None):
        if not classes:
            raise SpecError("the probe needs at least one class")
        self.classes = [int(c) for c in classes]
        self.capacity = capacity
        self._rng = np.random.default_rng([int(seed), 0x9E3779B9])
        self._used = dict.fromkeys(self.classes, 0)
        self._units: list[tuple[int, int]] = []

    def __len__(self) -> int:
        """How many units the sequence can give (``sys.maxsize`` without a capacity)."""
        import sys

        return sys.maxsize if self.capacity is None else self.capacity * len(self.classes)

    def __getitem__(self, n: int) -> tuple[int, int]:
        while len(self._units) <= n:
            open_ = [c for c in self.classes if self.capacity is None or self._used[c] < self.capacity]
            if not open_:
                raise IndexError(n)
            c = open_[int(self._rng.integers(len(open_)))]
            self._units.append((c, self._used[c]))
            self._used[c] += 1
        return self._units[n]

    def take(self, start: int, stop: int) -> list[tuple[int, int]]:
        return [self[n] for n in range(start, min(stop, len(self)))]


# ---------------------------------------------------------------------- what the probe observes
#: One sample's prediction: ``(label, top-5 label indices, top-1 probability or NaN)``.
Row = tuple[int, list[int], float]


class Oracle:
    """Predictions of the classifier under test for sample keys (``{shift}/{class:04d}/{index:02d}``).

    Subclasses generate and classify (:class:`GeneratingOracle`) or look predictions up in a table
    (:class:`TableOracle`, for pools generated once: validation and tests).
    """

    #: Indices per class available (``None``: unbounded).
    capacity: int | None = None
    #: The classes the units are drawn from (``None``: the generator's).
    classes: list[int] | None = None
    #: Samples generated (not served from a cache) so far.
    generated: int = 0

    def predict(self, requests: list[tuple[object, int, int]]) -> dict[str, Row]:  # pragma: no cover - interface
        raise NotImplementedError


class TableOracle(Oracle):
    """Predictions looked up in a table: ``{shift_id: ShiftPredictions}`` (e.g. read from an eval's
    predictions file over a pool of every phrase's samples)."""

    def __init__(self, predictions: dict, capacity: int | None = None, classes: Sequence[int] | None = None):
        from .layout import key_class

        self.rows: dict[str, Row] = {}
        for p in predictions.values():
            conf = p.confidence if p.confidence is not None else np.full(len(p.keys), np.nan)
            for key, label, top, c in zip(p.keys, p.labels.tolist(), p.topk.tolist(), conf.tolist()):
                self.rows[key] = (int(label), [int(t) for t in top], float(c))
        self.capacity = capacity
        self.classes = sorted({key_class(k) for k in self.rows}) if classes is None else [int(c) for c in classes]

    def predict(self, requests):
        from .layout import sample_key

        out = {}
        for shift, c, i in requests:
            key = sample_key(shift.id, c, i)
            if key not in self.rows:
                raise SpecError(f"the pool has no prediction for {key!r}; it must hold every unit the probe draws "
                                "(every phrase and base, capacity indices per class)")
            out[key] = self.rows[key]
        return out


class GeneratingOracle(Oracle):
    """Generates the samples through a :class:`~dsi_bench.synthesis.Synthesizer` (its cache serves repeats,
    every pipeline batch mixes phrases) and classifies them."""

    def __init__(self, synthesizer, model, predictor, *, device: str = "cpu", batch_size: int = 64,
                 seed: int = 0, progress: bool = True):
        self.synth, self.model, self.predictor = synthesizer, model, predictor
        self.device, self.batch_size, self.seed, self.progress = device, batch_size, seed, progress
        self.module = model.module.to(device).eval()

    def predict(self, requests):
        import torch
        from tqdm.auto import tqdm

        from .synthesis import SampleRequest

        reqs = [SampleRequest(shift, c, i, self.seed) for shift, c, i in requests]
        cache = self.synth.cache
        misses = sum(1 for r in reqs if cache is None or self.synth.cache_key(r) not in cache)
        with tqdm(total=len(reqs), desc="probe images", unit="img", disable=not self.progress, leave=False,
                  dynamic_ncols=True) as bar:
            samples = self.synth.samples(reqs, progress=bar.update)
        self.generated += misses
        out: dict[str, Row] = {}
        with torch.inference_mode():
            for s in range(0, len(samples), self.batch_size):
                chunk = samples[s:s + self.batch_size]
                x = torch.stack([self.model.transform(g.image) for g in chunk]).to(self.device)
                top, conf = self.predictor(self.module(x))
                for g, t, c in zip(chunk, top.tolist(), conf.tolist()):
                    out[g.request.key] = (int(g.request.label), [int(v) for v in t], float(c))
        return out


# ---------------------------------------------------------------------- the probe
@dataclass
class ProbeResult:
    """What :func:`probe` found.

    Attributes:
        table: one row per phrase, worst first: phrase, group, shift id, n, paired drop with its
            anytime-valid interval, flip and reverse-flip rates, p and adjusted p, significant, verdict.
        top: the ``top_k`` worst phrases (shift ids), worst first.
        separated: whether the top k were separated (certified) before the budget ran out.
        stopped: why the probe stopped: ``separated``, ``budget`` or ``exhausted`` (no phrase could take
            more pairs).
        images: images used (shifted samples plus distinct base twins); ``exhaustive``: what evaluating
            every phrase on every unit the probe reached would use; ``generated``: images not served
            from a cache or table.
        rounds: allocation rounds; ``seconds``: wall time.
        results: the harness-schema :class:`~dsi_bench.results.Results` (with its ``probe`` section).
        files: what was written (results, predictions, state, report) when ``out`` was given.
    """

    table: list[dict]
    top: list[str]
    separated: bool
    stopped: str
    images: int
    exhaustive: int
    generated: int
    rounds: int
    seconds: float
    results: object = None
    files: dict = field(default_factory=dict)

    def format_table(self, limit: int | None = None) -> str:
        """The ranked table as text (worst first)."""
        head = f"{'rank':>4}  {'phrase':44} {'n':>4} {'drop %':>7} {'interval':>15} {'flip %':>6} {'adj. p':>8}"
        lines = [head]
        for row in self.table[:limit]:
            lo, hi = row["drop_ci"]
            mark = " *" if row["significant"] else ""
            lines.append(f"{row['rank']:>4}  {row['phrase'][:44]:44} {row['n']:>4} {100 * row['drop']:>7.1f} "
                         f"[{100 * lo:>5.1f},{100 * hi:>6.1f}] {100 * row['flip_rate']:>6.1f} "
                         f"{row['p_adjusted']:>8.2g}{mark}")
        return "\n".join(lines)


def resolve_phrases(phrases="builtin", groups: Sequence[str] | None = None) -> list:
    """The phrases to probe as :class:`~dsi_bench.phrases.Phrase` objects.

    Args:
        phrases: ``"builtin"`` (the vocabulary), a text file (one phrase per line), or a list of phrases,
            templates, shifts or :class:`~dsi_bench.phrases.Phrase` objects.
        groups: with ``"builtin"``, only these vocabulary groups.

    Raises:
        ShiftError, SpecError: an unknown group, an unreadable file, a bad phrase, ``base`` among them,
            or fewer than two phrases.
    """
    from .phrases import Phrase, list_phrases, load_phrases
    from .shifts import Shift, get_shift

    if isinstance(phrases, str) and phrases == "builtin":
        if groups:
            chosen = [p for g in groups for p in list_phrases(group=g)]
        else:
            chosen = list_phrases()
    elif isinstance(phrases, (str, os.PathLike)):
        if groups:
            raise SpecError("groups= filters the built-in vocabulary; a phrase file is used as it is")
        if not Path(phrases).expanduser().is_file():
            raise SpecError(f"phrases={os.fspath(phrases)!r} (--phrases) is neither 'builtin' nor a file; give a text "
                            "file with one phrase per line, or 'builtin'")
        chosen = load_phrases(Path(phrases).expanduser())
    else:
        if groups:
            raise SpecError("groups= filters the built-in vocabulary; a list of phrases is used as it is")
        chosen = []
        for p in phrases:
            if isinstance(p, Phrase):
                chosen.append(p)
            else:
                shift = p if isinstance(p, Shift) else get_shift(p)
                chosen.append(Phrase(text=shift.name, group="custom" if shift.is_custom else shift.group, shift=shift))
    unique = list({p.id: p for p in chosen}.values())
    merged = len(chosen) - len(unique)
    if any(p.id == "base" for p in unique):
        raise SpecError("'base' is what every phrase is compared with; leave it out of the phrases")
    if len(unique) < 2:
        also = f" ({merged} were the same shift written differently, and count once)" if merged else ""
        raise SpecError(f"the probe ranks phrases against each other and needs at least 2 different ones, got "
                        f"{len(unique)}{also}")
    if merged:
        logger.warning("%d phrases were the same shift as another (same prompt); each is probed once", merged)
    return unique


def _state_settings(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def probe(
    classifier,
    phrases="builtin",
    data=None,
    *,
    budget: int,
    top_k: int = 3,
    alpha: float = 0.05,
    correction: str = "holm",
    initial: int = 10,
    step: int = 10,
    tolerance: float = 0.0,
    max_per_phrase: int | None = None,
    groups: Sequence[str] | None = None,
    order_seed: int = 0,
    weights: str | None = None,
    transform: Callable | None = None,
    name: str | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    out: str | os.PathLike | None = None,
    resume: bool = True,
    report: bool = True,
    report_top: int = 10,
    oracle: Oracle | None = None,
    progress: bool = True,
):
    """Search ``phrases`` for the shifts that lower ``classifier``'s accuracy most (see the module docs).

    Args:
        classifier: anything :func:`~dsi_bench.evaluate.evaluate` takes (``world:base``, ``torchvision:resnet50``, ...).
        phrases: ``"builtin"``, a phrase file, or a list (see :func:`resolve_phrases`).
        data: the generator, as ``evaluate``'s ``data=`` for ``source="synth"``: ``{"generator": "./sd2",
            "tokens": "tokens.zip", "classes": "0-99", "seed": 0, "device": "cuda", ...}`` or a
            :class:`~dsi_bench.ShiftedImageNet`; default: Stable Diffusion 2 with the ImageNet* tokens.
        budget: the most images to use (shifted samples plus distinct base twins).
        top_k: how many of the worst phrases to identify.
        alpha: error level of the intervals, the tests and the separation.
        correction: ``holm`` (default), ``bh`` or ``none`` (see :func:`adjust_p`).
        initial, step: pairs every phrase starts with; pairs an active phrase gets per round.
        tolerance: drops closer than this count as tied when deciding that the top k are separated.
        max_per_phrase: the most pairs one phrase may take (default: no limit beyond the budget).
        groups: with ``phrases="builtin"``, only these vocabulary groups.
        order_seed: seed of the unit sequence (which classes the pairs come from, in what order).
        weights, transform, name, batch_size, device: the classifier, as in ``evaluate``.
        out: folder for ``probe.json`` (harness-schema results), its predictions, the resumable state and
            ``report/`` (twin galleries of the top failures). ``None``: nothing is written.
        resume: continue from ``out``'s state when its settings match (a finished probe is replayed
            without generating anything); ``False`` refuses a folder that holds one.
        report: write the visual report of the ``report_top`` worst phrases into ``out/report/``.
        oracle: predictions from elsewhere instead of generating (:class:`TableOracle` over a pool).

    Returns:
        :class:`ProbeResult`.

    Raises:
        SpecError, ShiftError, ModelLoadError, OfflineError: bad input, before anything is generated.
    """
    from .validate import check_positive_int

    t0 = time.time()
    check_positive_int(budget, "budget", example=2000)
    check_positive_int(top_k, "top_k", example=3)
    check_positive_int(initial, "initial", example=10)
    check_positive_int(step, "step", example=10)
    check_positive_int(report_top, "report_top", example=10)
    if max_per_phrase is not None:
        check_positive_int(max_per_phrase, "max_per_phrase", example=200)
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise SpecError(f"alpha={alpha!r} must be between 0 and 1, e.g. 0.05")
    if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < 2):
        raise SpecError(f"tolerance={tolerance!r} must be a drop difference in [0, 2), e.g. 0.05")
    if correction not in CORRECTIONS:
        raise SpecError(f"unknown correction {correction!r}; choose one of {', '.join(CORRECTIONS)}")
    chosen = resolve_phrases(phrases, groups)
    if top_k >= len(chosen):
        raise SpecError(f"top_k={top_k} (--top-k) must be smaller than the number of phrases ({len(chosen)}): "
                        "the probe separates the worst top_k from the rest")
    setup = _Setup.open(classifier, data, oracle, weights=weights, transform=transform, name=name,
                        batch_size=batch_size, device=device, progress=progress)
    units = UnitSequence(setup.classes, order_seed, setup.oracle.capacity)
    cap = min(len(units), max_per_phrase or len(units))  # pairs one phrase can take
    first_cost = (len(chosen) + 1) * min(initial, cap)
    if first_cost > budget:  # before the output folder exists
        raise SpecError(f"a budget of {budget} images (budget=, --budget) cannot give each of the {len(chosen)} "
                        f"phrases its first {initial} pairs ({first_cost} images with their base twins); raise the "
                        "budget, lower the first pairs (initial=, --initial) or probe fewer phrases")
    lock = contextlib.nullcontext()
    if out is not None:  # one probe per folder at a time, held from the state's first read to the report
        from .files import ensure_writable_dir
        from .locks import folder_lock

        out = ensure_writable_dir(Path(out).expanduser(), "probe folder")
        lock = folder_lock(out, "probe folder")
    with lock:
        settings = {"phrases": [p.shift.template for p in chosen], "classifier": setup.model_info["spec"],
                    "weights": setup.model_info.get("weights"), "data": setup.dataset_record, "top_k": top_k,
                    "alpha": alpha, "initial": initial, "step": step, "tolerance": tolerance,
                    "max_per_phrase": max_per_phrase, "order_seed": order_seed, "classes": setup.classes,
                    "capacity": setup.oracle.capacity}
        state = _State.open(out, settings, resume)
        shifts = [p.shift for p in chosen]
        from .shifts import get_shift

        base = get_shift("base")
        n = np.zeros(len(chosen), np.int64)  # pairs observed per phrase
        n_base = 0  # base twins observed (units 0..n_base-1)
        rows: dict[str, Row] = {}
        diffs: list[list[float]] = [[] for _ in chosen]

        def observe(plan: dict[int, int]) -> None:
            from .layout import sample_key

            nonlocal n_base
            new_base = max([n_base] + [int(n[a]) + extra for a, extra in plan.items()])
            requests = [(base, c, i) for c, i in units.take(n_base, new_base)]
            taken = {a: units.take(int(n[a]), int(n[a]) + extra) for a, extra in plan.items()}
            for a, got in taken.items():
                requests += [(shifts[a], c, i) for c, i in got]
            rows.update(state.predict(setup.oracle, requests))
            n_base = new_base
            for a, got in taken.items():
                for c, i in got:
                    twin = rows[sample_key("base", c, i)]
                    shifted = rows[sample_key(shifts[a].id, c, i)]
                    diffs[a].append(float(twin[1][0] == twin[0]) - float(shifted[1][0] == shifted[0]))
                n[a] += len(got)

        def cost(plan: dict[int, int]) -> int:
            return sum(plan.values()) + max(0, max([n_base] + [int(n[a]) + e for a, e in plan.items()]) - n_base)

        m = len(chosen)
        first = {a: min(initial, cap) for a in range(m)}
        from tqdm.auto import tqdm

        bar = tqdm(total=budget, desc="probe budget", unit="img", disable=not progress, dynamic_ncols=True)
        observe(first)
        used = int(n.sum()) + n_base
        bar.update(used)
        rounds, stopped = 1, None
        memo: dict[tuple[int, int], tuple[float, float]] = {}

        def intervals() -> list[tuple[float, float]]:  # simultaneous ones, recomputed only for phrases that moved
            for a in range(m):
                if (a, int(n[a])) not in memo:
                    memo[(a, int(n[a]))] = confidence_sequence(diffs[a], alpha / m)
            return [memo[(a, int(n[a]))] for a in range(m)]

        while True:
            status = race_status(diffs, top_k, alpha, tolerance, intervals())
            if status.separated:
                stopped = "separated"
                break
            active = [a for a in np.flatnonzero(status.active) if n[a] < cap]
            if not active:
                stopped = "exhausted"
                break
            # widest intervals first when the budget cannot feed every active phrase
            active.sort(key=lambda a: (-(status.upper[a] - status.lower[a]), a))
            plan: dict[int, int] = {}
            for a in active:
                trial = {**plan, a: int(min(step, cap - n[a]))}
                if cost(trial) <= budget - used:
                    plan = trial
            if not plan:
                stopped = "budget"
                break
            observe(plan)
            bar.update(int(n.sum()) + n_base - used)
            used = int(n.sum()) + n_base
            rounds += 1
            state.save()
        bar.close()
        state.save()  # the last status stands: every exit above leaves the observations as it judged them
        table = _table(chosen, diffs, status, alpha, correction)
        exhaustive = m * int(n.max()) + int(n.max())
        result = ProbeResult(table=table, top=[chosen[a].id for a in status.top], separated=status.separated,
                             stopped=stopped, images=used, exhaustive=exhaustive, generated=setup.oracle.generated,
                             rounds=rounds, seconds=0.0)
        probe_section = {
            "method": "paired racing with anytime-valid betting confidence sequences (Waudby-Smith & Ramdas 2023); "
                      "successive accepts/rejects for the top k",
            "intervals": "anytime-valid at level 1 - alpha (top1_ci and drop_ci of every shift); mcnemar_p is None",
            "correction": correction, "alpha": alpha, "top_k": top_k, "initial": initial, "step": step,
            "tolerance": tolerance, "max_per_phrase": max_per_phrase, "order_seed": order_seed, "budget": budget,
            "images": used, "exhaustive_images": exhaustive, "generated": setup.oracle.generated, "rounds": rounds,
            "stopped": stopped, "separated": status.separated, "top": result.top, "phrases": len(chosen),
            "table": table,
        }
        result.results = setup.results(rows, units, n_base, chosen, n, probe_section)
        result.seconds = time.time() - t0
        result.results.data["probe"]["seconds"] = round(result.seconds, 3)
        if out is not None:
            result.files = _write(result, out, report, report_top, progress)
        return result


def _table(chosen, diffs, status: RaceStatus, alpha: float, correction: str) -> list[dict]:
    p = np.array([one_sided_p(d, alpha) for d in diffs])
    adjusted = adjust_p(p, correction)
    order = sorted(range(len(chosen)), key=lambda a: (-status.mean[a], -status.lower[a], a))
    table = []
    for rank, a in enumerate(order, 1):
        d = np.asarray(diffs[a])
        lo, hi = confidence_sequence(d, alpha)
        verdict = "top" if status.accepted[a] else "out" if status.rejected[a] else "undecided"
        table.append({
            "rank": rank, "phrase": chosen[a].text, "group": chosen[a].group, "shift": chosen[a].id,
            "template": chosen[a].shift.template, "n": int(d.size), "drop": float(d.mean()) if d.size else 0.0,
            "drop_ci": [lo, hi], "drop_ci_simultaneous": [float(status.lower[a]), float(status.upper[a])],
            "flip_rate": float((d > 0).mean()) if d.size else 0.0,
            "reverse_flip_rate": float((d < 0).mean()) if d.size else 0.0,
            "p": float(p[a]), "p_adjusted": float(adjusted[a]), "significant": bool(adjusted[a] <= alpha),
            "race": verdict,
        })
    return table


# ---------------------------------------------------------------------- set-up, state, output
@dataclass
class _Setup:
    oracle: Oracle
    classes: list[int]
    class_names: list[str]
    label_space: str
    model_info: dict
    dataset_record: dict
    data_settings: dict
    device: str
    batch_size: int

    @classmethod
    def open(cls, classifier, data, oracle, *, weights, transform, name, batch_size, device, progress) -> _Setup:
        from .classes import ClassList
        from .datasets import ShiftedDataset, dataset_arguments
        from .evaluate import _jsonable, _Predictor
        from .models import load_model
        from .pipeline import resolve_device

        args = {} if data is None else dataset_arguments(data)
        if args.get("source", "synth") != "synth":
            raise SpecError(f"the probe generates its samples (source 'synth'), got source={args['source']!r}; pass "
                            "the generator's arguments in data=, e.g. {'generator': './sd2', 'tokens': 'tokens.zip'}")
        for k in ("per_class", "masks", "root"):
            if args.get(k) not in (None, False):
                raise SpecError(f"data={{{k!r}: ...}} does not apply to the probe: it chooses how many pairs each "
                                "phrase gets (budget=, initial=, step=, max_per_phrase=)")
        args = {k: v for k, v in args.items() if k not in ("per_class", "masks", "root", "source")}
        device = resolve_device(device, check=True)
        loaded = load_model(classifier, weights, transform)  # also with an oracle: the results name the model
        if oracle is None:
            ds = ShiftedDataset("base", source="synth", per_class=1, **args)
            classes, class_list = list(ds.class_indices), ds.class_list
            if loaded.num_outputs is not None and loaded.num_outputs != len(class_list):
                raise SpecError(f"{loaded.name} has {loaded.num_outputs} outputs but the label space has "
                                f"{len(class_list)} classes; the probe needs a classifier over the label space")
            predictor = _Predictor(len(class_list), None, None)
            oracle = GeneratingOracle(ds.backend.synthesizer, loaded, predictor, device=device,
                                      batch_size=batch_size, seed=ds.seed, progress=progress)
        else:
            class_list = args.get("class_list") or ClassList.imagenet()
            classes = list(oracle.classes)
        from .datasets import argument_defaults

        defaults = argument_defaults()
        record = _jsonable({"source": "synth", "root": None, "classes": args.get("classes"),
                            **{k: v for k, v in args.items() if k not in ("classes",)}})
        record.setdefault("seed", defaults["seed"])
        record.setdefault("tokens", defaults["tokens"])
        model_info = {"name": name or loaded.name, "spec": loaded.spec, "weights": loaded.weights,
                      "preprocessing": loaded.preprocessing, "num_outputs": loaded.num_outputs, "class_map": None,
                      "restricted_to_evaluated_classes": False, "amp": False}
        return cls(oracle, classes, class_list.names, class_list.name, model_info, record, args, device, batch_size)

    def results(self, rows: dict, units: UnitSequence, n_base: int, chosen, n, probe_section: dict):
        from .evaluate import data_info, hardware_info
        from .layout import sample_key
        from .metrics import ShiftPredictions
        from .results import RunConfig, build_results

        def preds_of(shift_id: str, count: int) -> ShiftPredictions:
            keys = [sample_key(shift_id, c, i) for c, i in units.take(0, count)]
            got = [rows[k] for k in keys]
            return ShiftPredictions(keys, np.array([g[0] for g in got], np.int64),
                                    np.array([g[1] for g in got], np.int64).reshape(len(got), -1),
                                    np.array([g[2] for g in got], np.float32)).sorted()

        preds = {"base": preds_of("base", n_base)}
        order = [r["shift"] for r in probe_section["table"]]
        by_id = {p.id: (p, int(k)) for p, k in zip(chosen, n)}
        for sid in order:
            preds[sid] = preds_of(sid, by_id[sid][1])
        per_class = max([i + 1 for _, i in units.take(0, n_base)] or [1])
        record = {**self.dataset_record, "per_class": per_class}
        fingerprints = {sid: _fingerprint(self.dataset_record, sid, p.keys) for sid, p in preds.items()}
        info = data_info("synth", None, False, record.get("classes"), fingerprints, None)
        run = RunConfig(batch_size=self.batch_size, num_workers=0, device=self.device, amp=False, amp_dtype=None,
                        channels_last=False, decode="full", draft_size=None, restrict=False, class_map=None,
                        world_size=1, dataset=record)
        from .shifts import get_shift

        shift_defs = {"base": get_shift("base"), **{p.id: p.shift for p in chosen}}
        results = build_results(preds, class_names=self.class_names, model=self.model_info, data=info,
                                label_space=self.label_space, hardware=hardware_info(self.device), run=run,
                                extra={"probe": probe_section}, shift_defs=shift_defs)
        alpha = probe_section["alpha"]
        for sid, p in preds.items():
            # fixed-sample intervals (Wilson) are not valid after adaptive stopping: anytime-valid ones instead
            lo, hi = confidence_sequence(2.0 * p.correct - 1.0, alpha)
            results.shifts[sid]["top1_ci"] = [(lo + 1) / 2, (hi + 1) / 2]
        for row in probe_section["table"]:
            s = results.shifts[row["shift"]]
            # nor is McNemar's test: the probe's anytime-valid p-values stand in for it
            s["mcnemar_p"] = None
            s.update({"probe_p": row["p"], "probe_p_adjusted": row["p_adjusted"], "drop_ci": row["drop_ci"],
                      "probe_rank": row["rank"]})
        results.predictions = preds
        return results


def _fingerprint(record: dict, shift_id: str, keys: Sequence[str]) -> str:
    blob = json.dumps({"data": record, "shift": shift_id, "keys": list(keys)}, sort_keys=True, default=str)
    return "probe:" + hashlib.sha256(blob.encode()).hexdigest()


class _State:
    """The probe's memory in ``out/probe-state.json``: its settings and every prediction so far. A rerun with
    the same settings replays from it (the allocation is a pure function of the predictions)."""

    def __init__(self, path: Path | None, digest: str, rows: dict):
        self.path, self.digest, self.rows = path, digest, rows
        self.hits = 0

    @classmethod
    def open(cls, out, settings: dict, resume: bool) -> _State:
        from .files import check_writable, read_json

        digest = _state_settings(settings)
        if out is None:
            return cls(None, digest, {})
        path = Path(out).expanduser() / STATE_NAME
        check_writable(path, "probe state")
        if not path.exists():
            return cls(path, digest, {})
        if not resume:
            raise SpecError(f"{str(path)!r} holds an earlier probe; resume it (leave out --no-resume; resume=True) "
                            "or give another --out")
        saved = read_json(path, "probe state", SpecError)
        if not isinstance(saved, dict) or saved.get("settings") != digest:
            raise SpecError(f"{str(path)!r} was written by a probe with other settings (phrases, classifier, "
                            "generator, budget rules or seeds); give another --out, or the same settings to resume")
        rows = {k: (int(v[0]), [int(t) for t in v[1]], float("nan") if v[2] is None else float(v[2]))
                for k, v in saved.get("predictions", {}).items()}
        logger.info("resuming the probe in %s: %d predictions kept", path.parent, len(rows))
        return cls(path, digest, rows)

    def predict(self, oracle: Oracle, requests: list) -> dict[str, Row]:
        from .layout import sample_key

        todo = [r for r in requests if sample_key(r[0].id, r[1], r[2]) not in self.rows]
        self.hits += len(requests) - len(todo)
        if todo:
            self.rows.update(oracle.predict(todo))
        return {sample_key(s.id, c, i): self.rows[sample_key(s.id, c, i)] for s, c, i in requests}

    def save(self) -> None:
        if self.path is None:
            return
        from .files import atomic_write

        blob = {"settings": self.digest,
                "predictions": {k: [v[0], v[1], None if math.isnan(v[2]) else round(v[2], 6)]
                                for k, v in self.rows.items()}}
        atomic_write(self.path, json.dumps(blob).encode())


def _write(result: ProbeResult, out: Path, report: bool, report_top: int, progress: bool) -> dict:
    files = {"state": out / STATE_NAME, "results": result.results.save(out / "probe.json"),
             "predictions": result.results.predictions_file}
    if report:
        files["report"] = _top_report(result, out / "report", report_top, progress)
    return files


def _top_report(result: ProbeResult, folder: Path, top: int, progress: bool) -> Path:
    """The visual report of base and the ``top`` worst phrases (their twin galleries)."""
    import copy

    from .files import ensure_writable_dir
    from .report import make_report
    from .results import Results

    ensure_writable_dir(folder, "report folder")
    keep = ["base"] + [row["shift"] for row in result.table[:top]]
    document = copy.deepcopy(result.results.data)
    document["shifts"] = {s: document["shifts"][s] for s in keep}
    document.pop("predictions", None)
    trimmed = Results(document)
    trimmed.predictions = {s: result.results.predictions[s] for s in keep}
    path = trimmed.save(folder / "top-failures.json")
    try:
        return make_report(path, folder, progress=progress).index
    except DsiBenchError as e:
        logger.warning("the probe's report could not be made: %s", e)
        return path
