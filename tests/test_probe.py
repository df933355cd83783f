"""The shift probe: its statistics on synthetic arms with known effects (fast, no generation), its driver
over a table of predictions (resume, errors), the phrase vocabulary, and one end-to-end run on the world."""

from __future__ import annotations

import numpy as np
import pytest

from dsi_bench.errors import ShiftError, SpecError
from dsi_bench.layout import sample_key
from dsi_bench.metrics import ShiftPredictions
from dsi_bench.probe import (
    TableOracle,
    UnitSequence,
    adjust_p,
    confidence_sequence,
    one_sided_p,
    probe,
    race_status,
)
from dsi_bench.shifts import get_shift

CLASSES = [1, 404, 779, 805]


def _pairs(rng, n, drop, base_acc=0.95):
    """Paired differences of n pairs: twin right with base_acc, shifted right with base_acc - drop."""
    return (rng.random(n) < base_acc).astype(float) - (rng.random(n) < base_acc - drop).astype(float)


def test_confidence_sequence_covers_the_mean_and_narrows():
    rng = np.random.default_rng(1)
    for drop in (0.0, 0.4, 0.85):
        true = 0.95 - (0.95 - drop)  # mean of D
        hits = [lo <= true <= hi for lo, hi in (confidence_sequence(_pairs(rng, 40, drop)) for _ in range(150))]
        assert np.mean(hits) >= 0.95
    d = _pairs(rng, 400, 0.4)
    lo_small, hi_small = confidence_sequence(d[:40])
    lo_big, hi_big = confidence_sequence(d)
    assert hi_big - lo_big < 0.5 * (hi_small - lo_small)
    assert confidence_sequence([]) == (-1.0, 1.0)
    with pytest.raises(ValueError):
        confidence_sequence([2.0])


def test_one_sided_p_is_valid_under_the_null_and_finds_real_drops():
    rng = np.random.default_rng(2)
    null = [one_sided_p(_pairs(rng, 150, 0.0)) for _ in range(300)]
    assert np.mean(np.array(null) <= 0.05) <= 0.05  # anytime-valid: conservative even at every n
    improving = [one_sided_p(-_pairs(rng, 150, 0.3)) for _ in range(50)]  # the phrase helps: never a failure
    assert max(improving) > 0.5 and np.mean(np.array(improving) <= 0.05) == 0
    assert all(one_sided_p(_pairs(rng, 60, 0.7)) < 1e-4 for _ in range(20))
    assert one_sided_p([]) == 1.0


def test_adjusted_p_values_match_holm_and_benjamini_hochberg():
    p = [0.01, 0.04, 0.03, 0.5]
    assert np.allclose(adjust_p(p, "holm"), [0.04, 0.09, 0.09, 0.5])
    assert np.allclose(adjust_p(p, "bh"), [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])
    assert np.allclose(adjust_p(p, "none"), p)
    with pytest.raises(SpecError, match="holm"):
        adjust_p(p, "bonferonni")


def test_race_accepts_the_clear_top_and_rejects_the_harmless():
    rng = np.random.default_rng(3)
    obs = [_pairs(rng, 200, d) for d in (0.9, 0.8, 0.75)] + [_pairs(rng, 200, 0.0) for _ in range(5)]
    status = race_status(obs, 3, 0.05)
    assert sorted(status.top) == [0, 1, 2]
    assert status.separated and status.accepted[:3].all() and status.rejected[3:].all()
    few = race_status([o[:5] for o in obs], 3, 0.05)  # 5 pairs each: nothing is decided yet
    assert not few.separated and few.active.all()


def test_unit_sequence_is_deterministic_class_uniform_and_respects_capacity():
    a, b = UnitSequence(CLASSES, seed=7), UnitSequence(CLASSES, seed=7)
    assert a.take(0, 50) == b.take(0, 50)
    assert a.take(0, 50) != UnitSequence(CLASSES, seed=8).take(0, 50)
    units = a.take(0, 400)
    counts = {c: sum(1 for u, _ in units if u == c) for c in CLASSES}
    assert min(counts.values()) > 70  # uniform over the 4 classes
    for c in CLASSES:  # each class's indices in order, none repeated
        assert [i for u, i in units if u == c] == list(range(counts[c]))
    pool = UnitSequence(CLASSES, seed=0, capacity=5)
    assert len(pool) == 20 and sorted(pool.take(0, 100)) == sorted((c, i) for c in CLASSES for i in range(5))


def _synthetic_pool(drops: dict[str, float], per_class: int, seed: int = 0, base_acc: float = 0.95) -> dict:
    """Predictions of a pool: every phrase on every unit, with known true drops (the shifted sample is wrong
    with a probability that makes the paired drop ``drop`` on average)."""
    rng = np.random.default_rng(seed)
    units = [(c, i) for c in CLASSES for i in range(per_class)]
    labels = np.array([c for c, _ in units])
    wrong = np.array([CLASSES[(CLASSES.index(c) + 1) % len(CLASSES)] for c, _ in units])
    twin_right = rng.random(len(units)) < base_acc
    preds = {"base": ShiftPredictions([sample_key("base", c, i) for c, i in units], labels,
                                      np.where(twin_right, labels, wrong)[:, None])}
    for phrase, drop in drops.items():
        sid = get_shift(phrase).id
        # shifted right only where the twin is, and then with probability 1 - drop / base_acc
        right = twin_right & (rng.random(len(units)) < 1 - drop / base_acc)
        preds[sid] = ShiftPredictions([sample_key(sid, c, i) for c, i in units], labels,
                                      np.where(right, labels, wrong)[:, None])
    return preds


DROPS = {"in the rain": 0.9, "at night": 0.75, "in the fog": 0.6, **{p: 0.0 for p in (
    "on a sandy beach", "in a desert", "in a kitchen", "made of glass", "and a dog", "in moonlight", "backlit",
    "in drizzle", "in a barn")}}


@pytest.mark.parametrize("seed", range(3))
def test_probe_finds_the_known_worst_phrases_with_a_fraction_of_the_images(seed):
    pool = _synthetic_pool(DROPS, per_class=75, seed=seed)
    exhaustive = (len(DROPS) + 1) * 4 * 75
    result = probe("world:base", list(DROPS), budget=exhaustive, oracle=TableOracle(pool, capacity=75),
                   order_seed=seed, progress=False)
    assert {r["phrase"] for r in result.table[:3]} == {"in the rain", "at night", "in the fog"}  # a set
    assert result.separated and result.stopped == "separated"
    assert result.images < 0.5 * exhaustive  # the harmless nine are dropped after a few rounds
    significant = {r["phrase"] for r in result.table if r["significant"]}
    assert significant <= {"in the rain", "at night", "in the fog"}  # never a harmless phrase
    assert {"in the rain", "at night"} <= significant
    row = result.table[0]
    assert row["drop_ci"][0] <= row["drop"] <= row["drop_ci"][1] and row["n"] >= 10
    assert row["drop_ci_simultaneous"][0] <= row["drop_ci"][0]  # the Bonferroni-level interval is wider
    assert sum(r["n"] for r in result.table) + max(r["n"] for r in result.table) == result.images


def test_probe_spends_at_most_its_budget_and_says_it_stopped_there():
    pool = _synthetic_pool({**DROPS, "in the rain": 0.6, "at night": 0.6, "in the fog": 0.6}, per_class=75)
    result = probe("world:base", list(DROPS), budget=400, oracle=TableOracle(pool, capacity=75), progress=False)
    assert result.stopped == "budget" and not result.separated and 400 - 25 < result.images <= 400  # a round short


class _Counting(TableOracle):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = 0

    def predict(self, requests):
        self.calls += len(requests)
        return super().predict(requests)


def test_probe_writes_harness_results_and_resumes_without_new_predictions(tmp_path):
    from dsi_bench.results import Results

    pool = _synthetic_pool(DROPS, per_class=30)
    first = _Counting(pool, capacity=30)
    a = probe("world:base", list(DROPS), budget=400, oracle=first, out=tmp_path, report=False, progress=False)
    assert first.calls == a.images > 0 and a.stopped == "budget"
    saved = Results.load(tmp_path / "probe.json")
    assert saved.data["probe"]["table"] == a.table and saved.data["probe"]["images"] == a.images
    assert list(saved.shifts)[:2] == ["base", a.table[0]["shift"]]  # worst first
    top = saved.shifts[a.table[0]["shift"]]
    assert top["mcnemar_p"] is None  # a fixed-sample test is not valid after adaptive stopping
    from dsi_bench.metrics import wilson_interval

    wilson = wilson_interval(top["correct"], top["n"])
    assert top["top1_ci"][0] <= top["top1"] <= top["top1_ci"][1]
    assert top["top1_ci"][1] - top["top1_ci"][0] > wilson[1] - wilson[0]  # anytime-valid: wider than Wilson
    assert top["probe_p_adjusted"] == a.table[0]["p_adjusted"] and top["template"].endswith("in the rain")
    assert top["pairs"] == a.table[0]["n"]
    assert abs((top["paired_base_top1"] - top["paired_top1"]) - a.table[0]["drop"]) < 1e-9
    assert (tmp_path / "probe.predictions.csv.gz").is_file()
    again = _Counting(pool, capacity=30)
    b = probe("world:base", list(DROPS), budget=400, oracle=again, out=tmp_path, report=False, progress=False)
    assert again.calls == 0 and b.table == a.table  # replayed from the state
    more = _Counting(pool, capacity=30)  # a larger budget goes on from there: only the new images are predicted
    c = probe("world:base", list(DROPS), budget=1300, oracle=more, out=tmp_path, report=False, progress=False)
    assert c.images > a.images and more.calls == c.images - a.images
    with pytest.raises(SpecError, match="other settings"):
        probe("world:base", list(DROPS), budget=400, alpha=0.1, oracle=again, out=tmp_path, progress=False)
    with pytest.raises(SpecError, match="earlier probe"):
        probe("world:base", list(DROPS), budget=400, oracle=again, out=tmp_path, resume=False, progress=False)


def test_probe_refuses_bad_input_before_any_work(tmp_path):
    """Every refusal comes before anything is predicted or written (no output folder is left behind)."""
    pool = _synthetic_pool(DROPS, per_class=5)
    oracle = _Counting(pool, capacity=5)
    phrases = list(DROPS)
    for kwargs, match in [
        ({"budget": 50}, "--initial"),
        ({"budget": 500, "top_k": 12}, "top_k"),
        ({"budget": 500, "alpha": 1.5}, "alpha"),
        ({"budget": 500, "correction": "fdr"}, "holm"),
        ({"budget": 0}, "budget"),
        ({"budget": 500, "data": {"source": "shards"}}, "synth"),
        ({"budget": 500, "data": {"per_class": 5}}, "per_class"),
    ]:
        with pytest.raises(SpecError, match=match):
            probe("world:base", phrases, oracle=oracle, progress=False, **kwargs)
    with pytest.raises(SpecError, match="base"):
        probe("world:base", ["base", "at night"], budget=500, oracle=oracle, progress=False)
    with pytest.raises(SpecError, match="at least 2"):
        probe("world:base", ["at night"], budget=500, oracle=oracle, progress=False)
    with pytest.raises(SpecError, match="neither 'builtin' nor a file"):
        probe("world:base", str(tmp_path / "missing.txt"), budget=500, oracle=oracle, progress=False)
    with pytest.raises(SpecError, match="--budget"):
        probe("world:base", phrases, budget=50, oracle=oracle, out=tmp_path / "never", progress=False)
    assert oracle.calls == 0 and not (tmp_path / "never").exists()


def test_the_vocabulary_has_hundreds_of_distinct_phrases_in_groups():
    from dsi_bench.phrases import PHRASE_GROUPS, list_phrases

    phrases = list_phrases()
    assert len(phrases) >= 300 and len({p.id for p in phrases}) == len(phrases)
    assert {p.group for p in phrases} == set(PHRASE_GROUPS[:-1])
    assert len(list_phrases(group="catalog")) == 23 and not any(p.id == "base" for p in phrases)
    assert all("<TOKEN>" in p.shift.template for p in phrases)
    night = list_phrases("*night*")
    assert night and all("night" in p.text for p in night)
    with pytest.raises(ShiftError, match="material"):
        list_phrases(group="materials")


def test_phrase_files_skip_comments_and_name_the_bad_line(tmp_path):
    from dsi_bench.phrases import load_phrases

    good = tmp_path / "p.txt"
    good.write_text("# mine\non a frozen lake\n\na watercolor painting of a <TOKEN>\non a frozen lake\n")
    assert [p.text for p in load_phrases(good)] == ["on a frozen lake", "a watercolor painting of a <TOKEN>",
                                                    "on a frozen lake"]
    (tmp_path / "same.txt").write_text("in the rain\nIN THE RAIN \nin_the_rain\n")
    with pytest.raises(SpecError, match="2 were the same shift"):  # merged, and the error says so
        probe("world:base", str(tmp_path / "same.txt"), budget=100, oracle=TableOracle({}), progress=False)
    bad = tmp_path / "bad.txt"
    bad.write_text("on a frozen lake\na <TOKEN> and a <TOKEN>\n")
    with pytest.raises(ShiftError, match="line 2"):
        load_phrases(bad)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ShiftError, match="no phrase"):
        load_phrases(tmp_path / "empty.txt")


def test_probe_on_the_world_end_to_end_with_report_and_cli(tmp_path, capsys):
    """Real generation: the world's generator and learned tokens, world:base, four phrases."""
    from dsi_bench.cli import main
    from dsi_bench.results import Results

    phrases = tmp_path / "phrases.txt"
    phrases.write_text("at night\nin the snow at night\nand a dog\nmade of glass\n")
    args = ["probe", "--classifier", "world:base", "--phrases", str(phrases), "--budget", "60", "--top-k", "1",
            "--initial", "6", "--step", "6", "--generator", "world", "--tokens", "world", "--sampler", "dpm++2m",
            "--steps", "15", "--guidance-scale", "3", "--gen-batch-size", "25", "--cache-dir",
            str(tmp_path / "cache"), "--out", str(tmp_path / "p"), "--report-top", "2", "-q"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "images used" in out and "at night" in out and "report:" in out
    saved = Results.load(tmp_path / "p" / "probe.json")
    probe_info = saved.data["probe"]
    assert 30 <= probe_info["images"] <= 60 and probe_info["generated"] == probe_info["images"]
    assert saved.data["run"]["dataset"]["generator"] == "world" and saved.data["run"]["dataset"]["tokens"] == "world"
    worst = probe_info["table"][0]
    assert worst["drop"] > 0.3  # world:base (trained on base renders only) fails at night
    html = (tmp_path / "p" / "report" / "index.html").read_text()
    # the custom phrase's twins are found from the template the results record (not regenerated under its id)
    custom = next(r for r in probe_info["table"][:2] if r["shift"] != "at_night")
    assert custom["shift"] in html and "img/" in html
    assert "images not shown" not in html
    # rerun: resumed, nothing generated
    assert main(args) == 0
    assert "(0 generated now" in capsys.readouterr().out
    assert main(["probe", "--classifier", "world:base", "--budget", "0", "--out", str(tmp_path / "q")]) == 2
    assert "--budget 0" in capsys.readouterr().err
    assert main(["phrases", "--group", "material"]) == 0
    assert "made of glass" in capsys.readouterr().out
