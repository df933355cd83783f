"""Statistics on hand-computable cases and published reference values."""

import numpy as np
import pytest

from dsi_bench.metrics import mcnemar_exact, paired_flips, per_class_accuracy, wilson_interval
from dsi_bench.results import ShiftPredictions, build_results, twin_key


@pytest.mark.parametrize("correct, n, expected", [
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score)
    (81, 263, (0.2553, 0.3662)),
    (15, 148, (0.0624, 0.1605)),
    (0, 20, (0.0, 0.1611)),
    (1, 29, (0.0061, 0.1718)),
    (29, 29, (0.8830, 1.0)),
])
def test_wilson_matches_published_values(correct, n, expected):
    lo, hi = wilson_interval(correct, n)
    assert (round(lo, 4), round(hi, 4)) == expected


def test_mcnemar_exact():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(1, 4) == pytest.approx(2 * (1 + 5) / 32)
    assert mcnemar_exact(30, 0) == pytest.approx(2 * 0.5**30)
    assert 0 < mcnemar_exact(4000, 3000) < 1e-20  # large counts stay finite


def test_paired_flips_on_a_constructed_case():
    twin = [True, True, True, False, False, True]
    shifted = [True, False, False, True, False, True]
    out = paired_flips(twin, shifted)
    assert out["pairs"] == 6 and out["flips"] == 2 and out["reverse_flips"] == 1
    assert out["flip_rate"] == pytest.approx(2 / 6) and out["reverse_flip_rate"] == pytest.approx(1 / 6)
    assert out["mcnemar_p"] == pytest.approx(1.0)


def test_per_class_accuracy():
    n, acc = per_class_accuracy(np.array([0, 0, 2, 2, 2]), np.array([1, 0, 1, 1, 0], bool), 3)
    assert n == [2, 0, 3] and acc[0] == 0.5 and acc[1] is None and acc[2] == pytest.approx(2 / 3)


def test_build_results_by_hand():
    """base: 4 samples, 3 right. snow: the same 4 twins + one sample without a twin."""
    base = ShiftPredictions(["base/0000/00", "base/0000/01", "base/0001/00", "base/0001/01"],
                            np.array([0, 0, 1, 1]),
                            np.array([[0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [1, 0, 2, 3, 4], [0, 2, 3, 4, 5]]))
    snow = ShiftPredictions(["in_the_snow/0000/00", "in_the_snow/0000/01", "in_the_snow/0001/00",
                             "in_the_snow/0001/01", "in_the_snow/0001/02"],
                            np.array([0, 0, 1, 1, 1]),
                            np.array([[0, 1, 2, 3, 4], [1, 2, 3, 4, 5], [2, 3, 4, 5, 6], [1, 0, 2, 3, 4],
                                      [1, 0, 2, 3, 4]]))
    names = [f"c{i}" for i in range(10)]
    r = build_results({"base": base, "in_the_snow": snow}, class_names=names, model={"name": "m"},
                      data={"source": "test", "fingerprint": "x"})
    b, s = r.shifts["base"], r.shifts["in_the_snow"]
    assert (b["n"], b["top1"], b["top5"]) == (4, 0.75, 0.75)
    assert (s["n"], s["top1"], s["top5"]) == (5, 0.6, 0.6)
    assert s["drop_vs_base"] == pytest.approx(0.15)
    # pairs: (right, right), (right, wrong), (right, wrong), (wrong, right)
    assert (s["pairs"], s["flips"], s["reverse_flips"]) == (4, 2, 1)
    assert s["flip_rate"] == 0.5 and s["reverse_flip_rate"] == 0.25
    assert s["classes"] == [0, 1] and s["per_class_n"] == [2, 3] and s["per_class_top1"] == [0.5, pytest.approx(2 / 3)]
    assert [w["class"] for w in s["worst_classes"]] == [0, 1]
    assert s["worst_classes"][0] == {"class": 0, "name": "c0", "pairs": 2, "base_top1": 1.0, "top1": 0.5, "drop": 0.5}
    assert r["summary"]["mean_top1"] == 0.6 and r["summary"]["worst_shift"] == "in_the_snow"
    assert r["schema"] == "dsi-bench/results" and r["schema_version"] == 2 and r.run is None
    assert twin_key("in_the_snow/0207/03") == "base/0207/03"
    assert "in_the_snow" in r.table() and "60.0" in r.table()


def test_a_registered_metric_drives_results_tables_and_ranking(monkeypatch, tmp_path):
    """One entry in the metric table: computed per shift, shown in the text table, rankable in leaderboards."""
    from dsi_bench import metrics
    from dsi_bench.leaderboard import make_leaderboard

    monkeypatch.setattr(metrics, "METRICS", dict(metrics.METRICS))
    monkeypatch.setattr("dsi_bench.results.METRICS", metrics.METRICS)
    monkeypatch.setattr("dsi_bench.leaderboard.METRICS", metrics.METRICS)

    def error_rate(ctx):
        return {"error_rate": 1 - float(ctx.p.correct.mean())}

    metrics.register_metric(metrics.Metric("error_rate", "err", "pct", False, False, False, error_rate, "top-1 error"))
    with pytest.raises(ValueError, match="already registered"):
        metrics.register_metric(metrics.METRICS["top1"])
    assert "error_rate" in metrics.rankable_metrics()
    p = ShiftPredictions(["base/0000/00", "base/0000/01"], np.array([0, 0]), np.array([[0] * 5, [1] * 5]))
    for name, top in (("a", [[0] * 5, [0] * 5]), ("b", [[1] * 5, [1] * 5])):
        q = ShiftPredictions(["in_the_snow/0000/00", "in_the_snow/0000/01"], np.array([0, 0]), np.array(top))
        r = build_results({"base": p, "in_the_snow": q}, class_names=["c0", "c1"], model={"name": name},
                          data={"source": "test", "fingerprint": "x"})
        assert r.shifts["in_the_snow"]["error_rate"] == (0.0 if name == "a" else 1.0)
        assert r["summary"]["metrics"]["error_rate"]["mean"] == (0.0 if name == "a" else 1.0)
        assert "err" in r.table(header=False).splitlines()[0]
        r.save(tmp_path / "results" / f"{name}.json")
    board = make_leaderboard(tmp_path / "results", tmp_path / "board", plots=False, sort="error_rate")
    assert [row.split(",")[2] for row in board["csv"].read_text().splitlines()[1:]] == ["a", "b"]
