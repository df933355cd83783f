"""Ambiguous and malformed input: keys of any width, predictions CSVs, class specs, CSV cells, one-line errors.

Every refusal is checked through the CLI: exit code 2, one line on stderr, no traceback.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from dsi_bench.build import ShardJob, ShardTask, run_job
from dsi_bench.cli import main
from dsi_bench.layout import sample_key


class _PlainJob(ShardJob):
    """Shards of tiny grey PNGs for class 0: ``per_class`` samples per shift, without a diffusion model."""

    def __init__(self, shifts, per_class):
        self.shifts, self.per_class = list(shifts), per_class
        self.plan = {"kind": "test", "shifts": [{"id": s} for s in self.shifts], "per_class": per_class}

    def tasks(self):
        return [ShardTask(s, 0, tuple(sample_key(s, 0, i) for i in range(self.per_class))) for s in self.shifts]

    def samples(self, task):
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (4, 4), (128, 128, 128)).save(buf, "PNG")
        for key in task.items:
            yield {"__key__": key, "png": buf.getvalue(), "cls": b"0", "json": json.dumps({"key": key}).encode()}


def _refused(capsys, argv, *needles):
    """Run the CLI: exit 2, one line on stderr containing every needle, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _csv(tmp_path, text: str, name: str = "p.csv", encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


# ---------------------------------------------------------------------- item 15: keys of any width
@pytest.mark.parametrize("per_class", [101, 1000])  # keys base/0000/100 and up
def test_predictions_with_wide_keys_score_back_to_eval(per_class, tmp_path, capsys):
    shifts = ("base",) if per_class == 1000 else ("base", "in_the_snow")
    run_job(_PlainJob(shifts, per_class), tmp_path / "shards", progress=False)
    preds, evaluated, scored = tmp_path / "p.csv", tmp_path / "eval.json", tmp_path / "score.json"
    assert main(["eval", "--classifier", "dsi_bench.testing:tiny_classifier", "--source", "shards", "--root",
                 str(tmp_path / "shards"), "--num-workers", "0", "-q", "--device", "cpu",
                 "--results", str(evaluated), "--predictions", str(preds)]) == 0
    keys = [line.split(",")[0] for line in preds.read_text().splitlines()[1:]]
    assert f"base/0000/{per_class - 1}" in keys and len(keys) == len(shifts) * per_class
    assert main(["score", str(preds), "--source", "shards", "--root", str(tmp_path / "shards"),
                 "--results", str(scored)]) == 0
    assert main(["score", str(preds), "--per-class", str(per_class)]) == 0  # without a source, by key
    capsys.readouterr()
    a, b = json.loads(evaluated.read_text()), json.loads(scored.read_text())
    assert a["shifts"].keys() == b["shifts"].keys()
    for s in a["shifts"]:
        assert a["shifts"][s]["top1"] == b["shifts"][s]["top1"] and a["shifts"][s]["n"] == per_class


def test_keys_are_read_exactly_as_sample_key_writes_them():
    from dsi_bench.layout import parse_key

    for shift, c, i in (("base", 0, 0), ("base", 7, 100), ("in_the_snow", 12345, 999_999)):
        assert parse_key(sample_key(shift, c, i)) == (shift, c, i)
    for other in ("base/0000/007", "base/7/07", "base/00000/00", "base/0000/7", "base/0000"):
        assert parse_key(other) is None, other


# ---------------------------------------------------------------------- item 14: ambiguous input
def test_an_empty_class_spec_is_an_error(tmp_path, capsys):
    from dsi_bench.classes import imagenet_classes, parse_class_spec
    from dsi_bench.errors import ClassSpecError

    for spec in ("", "  ", ",", " , "):
        with pytest.raises(ClassSpecError, match="empty"):
            parse_class_spec(spec, imagenet_classes())
    assert parse_class_spec("all", imagenet_classes()) == list(range(1000))
    assert parse_class_spec(None, imagenet_classes()) == list(range(1000))  # what "leave it out" gives


@pytest.mark.parametrize("argv", [
    ["generate", "--classes", "", "--tokens", "none", "--out", "OUT"],
    ["build", "--out", "", "--classes", "0"],
    ["eval", "--root", "OUT", "--results", ""],
    ["eval", "--root", "OUT", "--shifts", ","],
    ["leaderboard", "OUT", "--out", " "],
    ["generate", "--out", "OUT", "--device", ""],
    ["verify", ""],
])
def test_an_empty_value_never_stands_for_a_default(argv, tmp_path, capsys):
    """'' for --out would mean the current folder, for --results no file, for --shifts every shift."""
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    with pytest.raises(SystemExit) as e:  # refused while parsing
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "is empty; give a value" in err, err
    assert not any(tmp_path.iterdir()) and not Path("manifest.json").exists()


@pytest.mark.parametrize("row, needle", [
    ("base/0000/00,1000", "prediction 1000 is outside the label space"),
    ("base/0000/00,99999999999999999999", "prediction 99999999999999999999 is outside the label space"),
    ("base/0000/00,0,,5 1000", "top5 1000 is outside"),
    ("base/0000/00,0,1000,", "label 1000 is outside"),
    ("base/0000/00,-1", "prediction '-1' is not a class index"),
    ("base/5000/00,0", "names class 5000, outside the label space"),
])
def test_predictions_outside_the_label_space_are_refused_by_line(row, needle, tmp_path, capsys):
    path = _csv(tmp_path, "key,prediction,label,top5\nbase/0000/01,0\n" + row + "\n")
    _refused(capsys, ["score", str(path)], "line 3", needle)


def test_a_byte_order_mark_is_accepted(tmp_path, capsys):
    plain = _csv(tmp_path, "key,prediction\nbase/0000/00,0\nbase/0000/01,1\n", "plain.csv")
    marked = _csv(tmp_path, "\ufeffkey,prediction\nbase/0000/00,0\nbase/0000/01,1\n", "marked.csv")
    assert main(["score", str(plain), "--results", str(tmp_path / "a.json")]) == 0
    assert main(["score", str(marked), "--results", str(tmp_path / "b.json")]) == 0
    capsys.readouterr()
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["shifts"]["base"]["top1"] == b["shifts"]["base"]["top1"] == 0.5


# ---------------------------------------------------------------------- item 17: one line, not a traceback
def test_a_csv_that_is_not_utf8_is_one_line(tmp_path, capsys):
    rows = "".join(f"base/0000/{i:02d},0\n" for i in range(99))  # the decoder reads ahead of the rows parsed
    path = _csv(tmp_path, "key,prediction\n" + rows + "base/0001/00,caf\u00e9\n", encoding="latin-1")
    _refused(capsys, ["score", str(path)], "line 101: not UTF-8 text", "byte 0xe9", "save it as UTF-8")
    huge = _csv(tmp_path, "key,prediction\nbase/0000/00," + "9" * 5000 + "\n", "huge.csv")
    _refused(capsys, ["score", str(huge)], "line 2", "outside the label space")
    long = _csv(tmp_path, "key,prediction\nbase/0000/00,0\nbase/0000/01," + "1" * 200_000 + "\n", "long.csv")
    _refused(capsys, ["score", str(long)], "line 3", "not a CSV row", "field larger than field limit")


def test_a_hf_folder_with_pickled_weights_is_refused_without_unpickling(tmp_path, capsys):
    import pickle

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "resnet", "num_labels": 1000}))
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": print}))  # a pickle that names a callable
    run_job(_PlainJob(["base"], 2), tmp_path / "shards", progress=False)
    _refused(capsys, ["eval", "--classifier", f"hf:{folder}", "--source", "shards", "--root", str(tmp_path / "shards"),
                      "--num-workers", "0", "-q"], "pickled .bin", "needs model.safetensors", "safe_serialization")


def test_num_workers_below_zero_is_refused_up_front(capsys):
    for flag in ("--num-workers", "--workers"):  # while the arguments are read: before any model or data
        with pytest.raises(SystemExit) as stop:
            main(["eval", "--classifier", "nothing:here", "--root", "nowhere", flag, "-1"])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert "'-1' is not a whole number >= 0" in err and "Traceback" not in err


def test_an_error_in_a_dataloader_worker_is_one_line(tmp_path, capsys):
    class Undecodable(_PlainJob):
        def samples(self, task):
            for sample in super().samples(task):
                yield {**sample, "png": b"not an image"}

    run_job(Undecodable(["base"], 2), tmp_path / "shards", progress=False)
    line = _refused(capsys, ["eval", "--classifier", "dsi_bench.testing:tiny_classifier", "--source", "shards",
                             "--root", str(tmp_path / "shards"), "--num-workers", "1", "-q"],
                    "image of 'base/0000/00' does not decode")
    assert "DataLoader worker" not in line


def _results(tmp_path, capsys) -> dict:
    path = _csv(tmp_path, "key,prediction\nbase/0000/00,0\nbase/0000/01,1\n", "ok.csv")
    assert main(["score", str(path), "--results", str(tmp_path / "ok.json")]) == 0
    capsys.readouterr()
    return json.loads((tmp_path / "ok.json").read_text())


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.update(model="x"), "model.name must be text"),
    (lambda d: d["model"].update(name=5), "model.name must be text"),
    (lambda d: d.pop("summary"), "summary.metrics.top1 must be an object"),
    (lambda d: d["summary"]["metrics"].clear(), "summary.metrics.top1 must be an object"),
    (lambda d: d["summary"]["metrics"]["top1"].update(mean="x"), "mean and worst must be numbers"),
    (lambda d: d.update(shifts=[]), "shifts must map shift ids to objects"),
    (lambda d: d["shifts"]["base"].update(top1="high"), "shifts.base.top1 must be a number"),
    (lambda d: d["shifts"]["base"].update(top1_ci=[0]), "shifts.base.top1_ci must be a [low, high] pair"),
    (lambda d: d.update(data=None), "data must be an object"),
])
def test_malformed_results_are_refused_by_the_leaderboard(edit, needle, tmp_path, capsys):
    doc = _results(tmp_path, capsys)
    edit(doc)
    (tmp_path / "board").mkdir()
    (tmp_path / "board" / "r.json").write_text(json.dumps(doc))
    _refused(capsys, ["leaderboard", str(tmp_path / "board"), "--out", str(tmp_path / "out"), "--no-plots"],
             "r.json", "cannot be ranked", needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["=HYPERLINK(\"http://x\")", "+1+1", "-2", "@SUM(A1)"])
def test_leaderboard_csv_cells_never_start_a_formula(name, tmp_path, capsys):
    import csv

    doc = _results(tmp_path, capsys)
    doc["model"]["name"] = name
    (tmp_path / "board").mkdir()
    (tmp_path / "board" / "r.json").write_text(json.dumps(doc))
    assert main(["leaderboard", str(tmp_path / "board"), "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    with open(tmp_path / "out" / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["model"] == "'" + name and float(rows[0]["base_top1"]) == 0.5
    assert all(not v.startswith(("=", "+", "-", "@")) for row in rows for v in row.values())


def test_a_leaderboard_output_that_is_a_folder_is_refused_before_writing(tmp_path, capsys):
    doc = _results(tmp_path, capsys)
    (tmp_path / "board").mkdir()
    (tmp_path / "board" / "r.json").write_text(json.dumps(doc))
    (tmp_path / "out" / "leaderboard.csv").mkdir(parents=True)
    _refused(capsys, ["leaderboard", str(tmp_path / "board"), "--out", str(tmp_path / "out"), "--no-plots"],
             "leaderboard.csv", "is a folder, not a file")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["leaderboard.csv"]  # nothing half-written


@pytest.mark.parametrize("rows, needle", [
    ("key,prediction,label\nbase/0000/05,5,5\n", "label 5 disagrees with key 'base/0000/05' (class 0)"),
    ("key,prediction\nbase/0000/05,1,9\n", "3 fields, but the header has 2"),
    ("key,prediction,top5\nbase/0000/05,1,1 2 3 4 5 6\n", "top5 holds 6 labels"),
    ("key,prediction,top5\nbase/0000/05,1,2 3 4 5 6\n", "prediction 1 is not in its top5"),
])
def test_contradictory_prediction_rows_are_refused_without_a_source(rows, needle, tmp_path, capsys):
    """Without a source nothing else can tell which of two contradicting cells is right."""
    path = _csv(tmp_path, rows)
    _refused(capsys, ["score", str(path), "--results", str(tmp_path / "r.json")], "line 2", needle)
    assert not (tmp_path / "r.json").exists()


def test_a_leaderboard_out_that_is_a_file_is_named_as_such(tmp_path, capsys):
    doc = _results(tmp_path, capsys)
    (tmp_path / "board").mkdir()
    (tmp_path / "board" / "r.json").write_text(json.dumps(doc))
    (tmp_path / "out").write_text("mine")
    _refused(capsys, ["leaderboard", str(tmp_path / "board"), "--out", str(tmp_path / "out"), "--no-plots"],
             "is a file, not a folder")
    assert (tmp_path / "out").read_text() == "mine"


def test_results_and_predictions_on_one_path_are_refused(tmp_path, capsys):
    same = str(tmp_path / "r.json")
    _refused(capsys, ["eval", "--root", str(tmp_path), "--classifier", "torchvision:resnet18", "--results", same,
                      "--predictions", same], "are the same file")
