"""The harness: exact metrics on an oracle fixture, model specs, class maps, score, leaderboard, torchrun."""

import json
import os
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from dsi_bench.convert import convert_release
from dsi_bench.datasets import ShiftedImageNet
from dsi_bench.errors import OfflineError, PredictionsError, SpecError
from dsi_bench.evaluate import evaluate
from dsi_bench.metrics import wilson_interval
from dsi_bench.models import ClassMap, load_model
from dsi_bench.results import Results
from dsi_bench.score import score_predictions
from dsi_bench.testing import FAKE_WNIDS, make_fake_release, oracle_classifier, tiny_classifier

WNIDS = FAKE_WNIDS


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_fake_release(tmp_path_factory.mktemp("rel"), shifts=("base", "in_the_snow"), wnids=WNIDS,
                             size=16, pattern=True)


@pytest.fixture(scope="module")
def shards(release, classes, tmp_path_factory):
    out = tmp_path_factory.mktemp("star") / "shards"
    convert_release(release, out, class_list=classes, classes="0-2", samples_per_shard=40, progress=False)
    return out


def run(model, root, classes, source="imagenet-star", masks=False, **kw):
    m, t = oracle_classifier() if model == "oracle" else (model, kw.pop("transform", None))
    kw.setdefault("transform", t)
    data = {"source": source, "root": root, "classes": "0-2", "class_list": classes, "masks": masks}
    return evaluate(m, data, progress=False, num_workers=0, **kw)


def test_oracle_numbers_are_exact(release, classes):
    r = run("oracle", release, classes)
    base, snow = r.shifts["base"], r.shifts["in_the_snow"]
    assert (base["n"], base["correct"], base["top1"], base["top5"]) == (150, 135, 0.9, 1.0)
    assert base["top1_ci"] == list(wilson_interval(135, 150))
    assert (snow["n"], snow["correct"], snow["top1"]) == (150, 105, 0.7)
    assert snow["drop_vs_base"] == pytest.approx(0.2)
    assert (snow["pairs"], snow["flips"], snow["reverse_flips"]) == (150, 30, 0)
    assert snow["flip_rate"] == pytest.approx(0.2) and snow["mcnemar_p"] == pytest.approx(2 * 0.5**30)
    assert snow["per_class_top1"] == [pytest.approx(0.7)] * 3 and snow["per_class_n"] == [50, 50, 50]
    assert [w["drop"] for w in snow["worst_classes"]] == [pytest.approx(0.2)] * 3
    summary = dict(r["summary"])
    metrics = summary.pop("metrics")
    assert summary == {"base_top1": 0.9, "mean_top1": 0.7, "worst_shift": "in_the_snow", "worst_top1": 0.7,
                       "shifts": ["base", "in_the_snow"]}
    assert metrics["top1"] == {"mean": 0.7, "worst_shift": "in_the_snow", "worst": 0.7}
    assert metrics["flip_rate"]["mean"] == pytest.approx(0.2) and metrics["top5"]["mean"] == 1.0
    assert set(metrics) == {"top1", "top5", "drop_vs_base", "flip_rate"}  # the rankable ones
    # every setting that can move a number is recorded
    cfg = r.run
    assert (cfg["batch_size"], cfg["num_workers"], cfg["device"], cfg["amp"], cfg["amp_dtype"]) == (64, 0, "cpu",
                                                                                                   False, None)
    assert cfg["decode"] == "full" and cfg["draft_size"] is None  # the oracle's ToTensor does not shrink
    assert cfg["dataset"]["source"] == "imagenet-star" and cfg["dataset"]["classes"] == "0-2"
    assert cfg["dataset"]["class_list"] == {"class_list": "imagenet", "classes": 1000}
    assert cfg["dataset"]["masks"] is False and cfg["dataset"]["fast_decode"] is True  # defaults recorded too
    assert r["schema_version"] == 2
    assert r["data"]["source"] == "imagenet-star" and r["data"]["fingerprint"]
    assert r["model"]["name"] == "Oracle" and r["hardware"]["device"] == "cpu"


def test_shards_give_the_release_numbers_and_masks_apply(release, shards, classes, tmp_path):
    direct = run("oracle", release, classes)
    via = run("oracle", shards, classes, source="shards")
    for s in ("base", "in_the_snow"):
        a = {k: v for k, v in direct.shifts[s].items() if k != "fingerprint"}
        b = {k: v for k, v in via.shifts[s].items() if k != "fingerprint"}
        assert a == b
    assert via["data"]["fingerprint"].startswith("manifest:")
    masks = tmp_path / "masks.npz"
    j = np.arange(50_000)
    np.savez(masks, base=j % 2 == 0, in_the_snow=j % 2 == 0)
    masked = run("oracle", release, classes, masks=masks)
    assert masked.shifts["base"]["n"] == 75 and masked.shifts["base"]["top1"] == 1.0
    assert masked.shifts["in_the_snow"]["top1"] == pytest.approx(60 / 75)
    assert masked["data"]["masks"].startswith("masks.npz:sha256:")
    assert masked["data"]["fingerprint"] != direct["data"]["fingerprint"]


def test_class_maps_and_restriction(release, classes, tmp_path):
    oracle, t = oracle_classifier()

    class ThreeOutputs(torch.nn.Module):
        def forward(self, x):
            return oracle(x)[:, :3]

    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps(list(WNIDS)))
    mapped = run(ThreeOutputs(), release, classes, transform=t, class_map=cmap)
    assert mapped.shifts["base"]["top1"] == pytest.approx(140 / 150)  # class 2's wrong answer (3) is not an output
    assert mapped.shifts["base"]["top5"] == 1.0  # 3 outputs: top-5 is "among the 3"
    with pytest.raises(SpecError, match="has 3 outputs but the label space has 1000 classes; pass a class map"):
        run(ThreeOutputs(), release, classes, transform=t)
    # The oracle's wrong answer for class 2 is class 3: restricted to classes 0-2 it cannot say that.
    restricted = run("oracle", release, classes, restrict=True)
    assert restricted.shifts["base"]["correct"] == 140
    with pytest.raises(SpecError, match="maps outputs 0 and 1 to the same class 0"):
        ClassMap.from_entries([0, "tench"], classes)
    with pytest.raises(SpecError, match="'goldfsh', which is not .*Did you mean 'goldfish'"):
        ClassMap.from_entries(["goldfsh"], classes)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([0, 1]))
    with pytest.raises(SpecError, match="lists 2 outputs but the model has 3"):
        run(ThreeOutputs(), release, classes, transform=t, class_map=bad)


def test_model_specs(tmp_path, monkeypatch):
    import torchvision

    m = load_model("torchvision:resnet18", weights="none")
    assert m.num_outputs == 1000 and type(m.transform).__name__ == "ImageClassification"
    ckpt = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in m.module.state_dict().items()}}, ckpt)
    again = load_model("torchvision:resnet18", weights=str(ckpt))
    assert torch.equal(again.module.fc.weight, m.module.fc.weight)
    with pytest.raises(SpecError, match="no model 'resnet5'.*'resnet50'"):
        load_model("torchvision:resnet5")
    with pytest.raises(SpecError, match="no weights 'IMAGENET'"):
        load_model("torchvision:resnet18", weights="IMAGENET")
    with pytest.raises(SpecError, match="unknown model spec 'torchvison:resnet18'.*'torchvision'"):
        load_model("torchvison:resnet18")

    def offline(*args, **kwargs):
        import urllib.error

        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(OfflineError, match="resnet18-f37072fd.pth.*--weights path/to/checkpoint.pth"):
        load_model("torchvision:resnet18")

    user = tmp_path / "mine.py"
    user.write_text("from dsi_bench.testing import tiny_classifier\n\n\ndef build():\n"
                    "    return tiny_classifier(seed=3)\n")
    assert load_model(f"{user}:build").num_outputs == 1000
    assert load_model("dsi_bench.testing:oracle_classifier").module.num_classes == 1000
    with pytest.raises(SpecError, match="has no function 'bild'.*'build'"):
        load_model(f"{user}:bild")
    module, _ = tiny_classifier()
    scripted = tmp_path / "tiny.pt"
    torch.jit.script(module).save(str(scripted))
    loaded = load_model(str(scripted))
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded.module(x), module(x))


def test_hf_classifier_from_a_local_folder(release, classes, tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    folder = tmp_path / "hf-tiny"
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1], num_labels=1000)
    ResNetForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    m = load_model(f"hf:{folder}")
    assert m.num_outputs == 1000
    r = evaluate(m, {"source": "imagenet-star", "root": release, "classes": "0-2", "class_list": classes},
                 shifts="base", progress=False, num_workers=0)
    assert r.shifts["base"]["n"] == 150
    with pytest.raises(OfflineError, match="hf:DIR"):
        load_model("hf:nobody/no-such-model")


def test_predictions_score_back_to_the_same_results(release, shards, classes, tmp_path):
    pred = tmp_path / "pred.csv"
    r = run("oracle", shards, classes, source="shards", predictions=pred)
    scored = score_predictions(pred, {"source": "shards", "root": shards, "classes": "0-2", "class_list": classes})
    assert scored.shifts == r.shifts and scored["data"]["fingerprint"] == r["data"]["fingerprint"]
    # Release-style keys name the same samples.
    lines = pred.read_text().splitlines()
    rel = tmp_path / "release_keys.csv"
    rows = ["key,prediction"]
    for line in lines[1:]:
        key, _, top1, _ = line.split(",")
        shift, c, i = key.split("/")
        rows.append(f"{shift}/{WNIDS[int(c)]}/{i}.jpg,{top1}")
    rel.write_text("\n".join(rows) + "\n")
    star = {"source": "imagenet-star", "root": release, "classes": "0-2", "class_list": classes}
    again = score_predictions(rel, star)
    assert again.shifts["in_the_snow"]["top1"] == 0.7 and again.shifts["in_the_snow"]["flip_rate"] == pytest.approx(.2)
    # Unknown, duplicate and missing keys are reported, never dropped.
    (tmp_path / "dup.csv").write_text("\n".join(rows + [rows[5]]) + "\n")
    with pytest.raises(PredictionsError, match="1 keys appear more than once"):
        score_predictions(tmp_path / "dup.csv", star)
    (tmp_path / "unknown.csv").write_text("\n".join(rows + ["base/0007/00,1"]) + "\n")
    with pytest.raises(PredictionsError, match="1 keys are not samples of imagenet-star.*'base/0007/00'"):
        score_predictions(tmp_path / "unknown.csv", star)
    (tmp_path / "missing.csv").write_text("\n".join(rows[:-2]) + "\n")
    with pytest.raises(PredictionsError, match="2 samples have no prediction"):
        score_predictions(tmp_path / "missing.csv", star)
    partial = score_predictions(tmp_path / "missing.csv", star, allow_missing=True)
    assert partial["data"]["missing_predictions"] == {"in_the_snow": 2}
    assert partial.shifts["in_the_snow"]["n"] == 150
    (tmp_path / "nokey.csv").write_text("id,pred\n1,2\n")
    with pytest.raises(PredictionsError, match="columns key and prediction"):
        score_predictions(tmp_path / "nokey.csv", {"class_list": classes})


def _valid_png(path):
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
        return im.format == "PNG"


def test_leaderboard_from_three_results(release, classes, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    run("oracle", release, classes, name="oracle").save(folder / "oracle.json")
    for seed in (0, 1):
        m, t = tiny_classifier(seed=seed)
        run(m, release, classes, transform=t, name=f"tiny-{seed}").save(folder / f"tiny{seed}.json")
    from dsi_bench.leaderboard import make_leaderboard

    paths = make_leaderboard(folder, tmp_path / "board", plots=False)
    md = paths["md"].read_text()
    assert "| 1 | oracle | 70.0 | 90.0 | in_the_snow (70.0) |" in md
    rows = paths["csv"].read_text().splitlines()
    assert rows[0].startswith("group,rank,model,mean_top1") and len(rows) == 4 and ",oracle," in rows[1]

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags = []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)

    parser = Cells()
    parser.feed(paths["html"].read_text())
    parser.close()
    assert parser.tags.count("tr") == 4 and "script" in parser.tags and "th" in parser.tags
    assert paths["plots"] == []
    # Results on other data are flagged and kept apart; other schema versions are refused.
    other = json.loads((folder / "tiny1.json").read_text())
    other["data"]["fingerprint"] = "something else"
    (folder / "tiny1.json").write_text(json.dumps(other))
    paths = make_leaderboard(folder, tmp_path / "board2", plots=False)
    assert paths["groups"] == 2 and "different data (not comparable" in paths["md"].read_text()
    # A schema-1 file (before run settings and per-metric summaries) is upgraded on load and ranks as before.
    old = json.loads((folder / "tiny0.json").read_text())
    old["schema_version"] = 1
    del old["run"], old["summary"]["metrics"]
    (folder / "tiny0.json").write_text(json.dumps(old))
    upgraded = Results.load(folder / "tiny0.json")
    assert upgraded.run is None and upgraded["summary"]["metrics"]["top1"]["mean"] == old["summary"]["mean_top1"]
    assert make_leaderboard(folder, tmp_path / "board3", plots=False)["groups"] == 2
    other["schema_version"] = 0
    (folder / "tiny1.json").write_text(json.dumps(other))
    with pytest.raises(SpecError, match="schema version 0; this dsi-bench reads versions 1, 2"):
        make_leaderboard(folder, tmp_path / "board4")
    other["schema_version"] = 3
    (folder / "tiny1.json").write_text(json.dumps(other))
    with pytest.raises(SpecError, match="schema version 3; .*upgrade dsi-bench"):
        make_leaderboard(folder, tmp_path / "board4")


@pytest.mark.parametrize("sort", ["top1", "flip_rate"])
def test_leaderboard_plots(release, classes, tmp_path, sort):
    pytest.importorskip("matplotlib", reason="plots need the [plots] extra (matplotlib)")
    from dsi_bench.leaderboard import make_leaderboard

    folder = tmp_path / "results"
    run("oracle", release, classes, name="oracle").save(folder / "oracle.json")
    for seed in (0, 1):
        m, t = tiny_classifier(seed=seed)
        run(m, release, classes, transform=t, name=f"tiny-{seed}").save(folder / f"tiny{seed}.json")
    paths = make_leaderboard(folder, tmp_path / "board", sort=sort)
    names = sorted(p.name for p in paths["plots"])
    assert names == ["effective_robustness.png", "heatmap.png", "oracle_shifts.png", "tiny-0_shifts.png",
                     "tiny-1_shifts.png"]
    assert all(_valid_png(p) for p in paths["plots"])


def test_leaderboard_without_matplotlib_says_how_to_get_plots(release, classes, tmp_path, monkeypatch):
    import sys

    from dsi_bench.errors import OptionalDependencyError
    from dsi_bench.leaderboard import make_leaderboard

    run("oracle", release, classes, name="oracle").save(tmp_path / "results" / "oracle.json")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    with pytest.raises(OptionalDependencyError, match=r"pip install 'dsi-bench\[plots\]'.*--no-plots"):
        make_leaderboard(tmp_path / "results", tmp_path / "board")
    assert make_leaderboard(tmp_path / "results", tmp_path / "board", plots=False)["plots"] == []


def test_leaderboard_ranks_by_any_metric(release, classes, tmp_path):
    """--sort flip_rate ranks the lowest flip rate first; the tables show that metric per shift."""
    from dsi_bench.cli import main
    from dsi_bench.leaderboard import make_leaderboard

    folder = tmp_path / "results"
    run("oracle", release, classes, name="oracle").save(folder / "oracle.json")
    for seed in (0, 1):
        m, t = tiny_classifier(seed=seed)
        run(m, release, classes, transform=t, name=f"tiny-{seed}").save(folder / f"tiny{seed}.json")
    loaded = {n: Results.load(folder / f"{n}.json") for n in ("oracle", "tiny0", "tiny1")}
    flips = {n: r.shifts["in_the_snow"]["flip_rate"] for n, r in loaded.items()}
    paths = make_leaderboard(folder, tmp_path / "board", plots=False, sort="flip_rate")
    rows = paths["csv"].read_text().splitlines()
    assert rows[0].startswith("group,rank,model,mean_flip_rate,base_flip_rate,worst_shift,worst_flip_rate")
    ranked = [row.split(",")[2] for row in rows[1:]]
    by_name = {"oracle": "oracle", "tiny0": "tiny-0", "tiny1": "tiny-1"}
    assert ranked == [by_name[n] for n in sorted(flips, key=lambda n: (flips[n], by_name[n]))]
    md = paths["md"].read_text()
    assert "lower is better" in md and f"| oracle | {100 * flips['oracle']:.1f} | – |" in md
    with pytest.raises(SpecError, match="unknown metric to sort by 'mcnemar_p'"):
        make_leaderboard(folder, tmp_path / "b2", sort="mcnemar_p")
    assert main(["leaderboard", str(folder), "--out", str(tmp_path / "b3"), "--sort", "top5", "--no-plots"]) == 0


def test_torchrun_evaluation_equals_one_process(shards, classes, tmp_path):
    table = tmp_path / "classes.json"
    table.write_text(json.dumps([{"index": c.index, "wnid": c.wnid, "common_name": c.name} for c in classes]))
    env = {**os.environ, "DSI_BENCH_IMAGENET_CLASSES": str(table), "OMP_NUM_THREADS": "1"}
    args = ["eval", "--classifier", "dsi_bench.testing:oracle_classifier", "--source", "shards", "--root", str(shards),
            "--classes", "0-2", "--num-workers", "0", "--batch-size", "16", "-q"]
    one = subprocess.run([sys.executable, "-m", "dsi_bench.cli", *args, "--results", str(tmp_path / "one.json")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    import socket

    with socket.socket() as sock:  # the process group needs a real port (0 is not passed on to the ranks)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(port), "-m", "dsi_bench.cli", *args, "--results", str(tmp_path / "two.json")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = Results.load(tmp_path / "one.json"), Results.load(tmp_path / "two.json")
    assert a.shifts == b.shifts and a.shifts["in_the_snow"]["top1"] == 0.7


def test_timm_spec_when_installed():
    pytest.importorskip("timm")
    m = load_model("timm:resnet18", weights="none")
    assert m.num_outputs == 1000 and "timm data config" in m.preprocessing
    with pytest.raises(SpecError, match="timm has no model 'resnet1'"):
        load_model("timm:resnet1")


def test_empty_selection_is_an_error(release, classes, tmp_path):
    from dsi_bench.errors import DsiBenchError

    masks = tmp_path / "none.npz"
    np.savez(masks, base=np.zeros(50_000, bool))
    with pytest.raises(DsiBenchError, match="no samples to evaluate"):
        evaluate(oracle_classifier()[0], {"source": "imagenet-star", "root": release, "classes": "0-2",
                                          "class_list": classes, "masks": masks},
                 shifts="base", transform=oracle_classifier()[1], progress=False, num_workers=0)


def test_score_without_a_source_takes_labels_from_keys(tmp_path, classes):
    path = tmp_path / "p.csv"
    path.write_text("key,prediction\nbase/0000/00,0\nbase/0001/00,0\nbase/n01484850/00.jpg,2\n")
    r = score_predictions(path, {"class_list": classes})
    assert r.shifts["base"]["n"] == 3 and r.shifts["base"]["correct"] == 2
    assert r["data"]["fingerprint"] is None


def test_synthesized_source(tiny_model, tiny_tokens, capsys):
    from dsi_bench.cli import main

    module, transform = tiny_classifier()
    from dsi_bench.pipeline import PipelineSpec

    spec = PipelineSpec(model=str(tiny_model), steps=2, out_size=None, batch_size=4)
    r = evaluate(module, {"source": "synth", "classes": "0-1", "per_class": 2, "pipeline": spec, "tokens": tiny_tokens,
                          "cache_dir": False}, shifts="base,in the snow", transform=transform, progress=False)
    assert r.shifts["in_the_snow"]["pairs"] == 4 and r.shifts["base"]["n"] == 4
    # the generator's batch and device live in the data; the classifier's are evaluate's own: no collision
    both = evaluate(module, {"source": "synth", "classes": "0-1", "per_class": 2, "pipeline": spec,
                             "tokens": tiny_tokens, "cache_dir": False, "batch_size": 2, "device": "cpu"},
                    shifts="base", transform=transform, progress=False, batch_size=3, device="cpu")
    assert both.run["batch_size"] == 3 and both.run["dataset"]["batch_size"] == 2
    assert both.run["dataset"]["pipeline"]["steps"] == 2 and both.run["dataset"]["tokens"].endswith(".safetensors")
    # a dataset as the data: its arguments are reused, and its shift (with base for the pairs) is the default
    ds = ShiftedImageNet("in the snow", classes="0-1", per_class=2, pipeline=spec, tokens=tiny_tokens, cache_dir=False)
    from_ds = evaluate(module, ds, transform=transform, progress=False)
    assert list(from_ds.shifts) == ["base", "in_the_snow"]
    assert from_ds.shifts["in_the_snow"]["top1"] == r.shifts["in_the_snow"]["top1"]
    assert from_ds["data"]["fingerprint"] == r["data"]["fingerprint"]
    assert main(["eval", "--classifier", "dsi_bench.testing:tiny_classifier", "--source", "synth", "--shifts", "base",
                 "--classes", "0-1", "--per-class", "2", "--generator", str(tiny_model), "--tokens", str(tiny_tokens),
                 "--steps", "2", "-q"]) == 0
    assert "base" in capsys.readouterr().out
