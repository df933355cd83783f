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
    assert cfg["dataset"]["masks"] is False and cfg["dataset"]["fast_decode"] is False  # defaults recorded too
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
        key, _, top1, *_ = line.split(",")
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
    assert paths["groups"] == 2 and "different data, masks or decoding (not comparable" in paths["md"].read_text()
    # A schema-1 file (before run settings and per-metric summaries) is upgraded on load and ranks as before.
    old = json.loads((folder / "tiny0.json").read_text())
    old["schema_version"] = 1
    del old["run"], old["summary"]["metrics"]
    (folder / "tiny0.json").write_text(json.dumps(old))
    upgraded = Results.load(folder / "tiny0.json")
    assert upgraded.run is None and upgraded["summary"]["metrics"]["top1"]["mean"] == old["summary"]["mean_top1"]
    # ... but its JPEG decoding was not recorded, so it is not ranked with results that say "full"
    assert make_leaderboard(folder, tmp_path / "board3", plots=False)["groups"] == 3
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
    assert "lower is better" in md and f"| oracle | {100 * flips['oracle']:.1f} | - |" in md
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
    path.write_text("key,prediction\nbase/0000/00,0\nbase/0001/00,0\nbase/0002/00,2\n")
    r = score_predictions(path, {"class_list": classes})
    assert r.shifts["base"]["n"] == 3 and r.shifts["base"]["correct"] == 2
    # the data is the set of scored keys (no copy of the images was checked); with our keys and no masks the
    # files per class are unknown, so missing predictions cannot be checked, and the results say so
    assert r["data"]["fingerprint"].startswith("keys:") and r["data"]["missing_predictions"] is None
    assert "missing predictions: not checked" in r.table()
    with pytest.raises(PredictionsError, match="no predictions for 1 requested classes of base: 3"):
        score_predictions(path, {"class_list": classes, "classes": "0-3"})


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


# ---------------------------------------------------------------------- issue 11: decoding, scoring, reporting
def test_full_jpeg_decode_is_the_default_and_draft_is_opt_in(tmp_path, classes, monkeypatch):
    """The default dataset output equals PIL's full decode + the same transform, exactly; draft mode is opt-in,
    recorded, and never ranked with full decoding."""
    import io
    import zipfile

    from PIL import Image

    from dsi_bench.cli import main
    from dsi_bench.leaderboard import make_leaderboard

    rel = make_fake_release(tmp_path / "rel", wnids=WNIDS, size=64)  # noisy JPEGs: draft decoding differs
    module, tf = tiny_classifier(size=16)  # Resize(16) first: draft decoding would apply
    kw = {"source": "imagenet-star", "root": rel, "classes": "0-2", "per_class": 4, "class_list": classes}
    ds = ShiftedImageNet("base", **kw, transform=tf)
    assert ds.draft is None and len(ds) == 12
    streamed = {k: x for x, _, k in ds.stream(return_key=True)}
    with zipfile.ZipFile(rel / "base.zip") as z:
        for i, key in enumerate(ds.keys):
            c, n = (int(x) for x in key.split("/")[1:])
            expected = tf(Image.open(io.BytesIO(z.read(f"base/{WNIDS[c]}/{n:02d}.jpg"))).convert("RGB"))
            assert torch.equal(ds[i][0], expected) and torch.equal(streamed[key], expected), key
    fast = ShiftedImageNet("base", **kw, transform=tf, fast_decode=True)
    assert fast.draft == 16 and any(not torch.equal(fast[i][0], ds[i][0]) for i in range(len(ds)))

    full = evaluate(module, kw, shifts="base", transform=tf, progress=False, num_workers=0, name="m")
    draft = evaluate(module, {**kw, "fast_decode": True}, shifts="base", transform=tf, progress=False,
                     num_workers=0, name="m")
    assert (full.run["decode"], full.run["draft_size"], full.run["dataset"]["fast_decode"]) == ("full", None, False)
    assert (draft.run["decode"], draft.run["draft_size"], draft.run["dataset"]["fast_decode"]) == ("draft", 16, True)
    assert "decode: full" in full.table() and "decode: draft" in draft.table()
    folder = tmp_path / "results"
    full.save(folder / "full.json")
    draft.save(folder / "draft.json")
    paths = make_leaderboard(folder, tmp_path / "board", plots=False)
    assert paths["groups"] == 2  # same data, same model: still never ranked in one table
    md = paths["md"].read_text()
    assert "- JPEG decoding: full" in md and "- JPEG decoding: draft (JPEGs decoded at reduced scale" in md
    # the CLI: --fast-decode opts in
    table = tmp_path / "classes.json"
    table.write_text(json.dumps([{"index": c.index, "wnid": c.wnid, "common_name": c.name} for c in classes]))
    monkeypatch.setenv("DSI_BENCH_IMAGENET_CLASSES", str(table))
    from dsi_bench import clear_caches

    clear_caches()
    try:
        for flag, mode in (([], "full"), (["--fast-decode"], "draft")):
            out = tmp_path / f"cli{mode}.json"
            assert main(["eval", "--classifier", "dsi_bench.testing:tiny_classifier", "--source", "imagenet-star",
                         "--root", str(rel), "--classes", "0-2", "--per-class", "4", "--shifts", "base",
                         "--num-workers", "0", "-q", "--results", str(out), *flag]) == 0
            assert Results.load(out).run["decode"] == mode
    finally:
        monkeypatch.delenv("DSI_BENCH_IMAGENET_CLASSES")
        clear_caches()


def _release_file(path, classes=(0, 1), shifts=("base", "in_the_snow"), drop=(), top5=None):
    """A predictions file with release keys: right unless the file index is a multiple of 4 (then class + 1)."""
    rows = ["key,prediction" + (",top5" if top5 else "")]
    for s in shifts:
        for c in classes:
            for i in range(50):
                key = f"{s}/{WNIDS[c]}/{i:02d}.jpg"
                if key in drop:
                    continue
                guess = c + 1 if i % 4 == 0 else c
                extra = ""
                if top5 == "all" or (top5 == "some" and i % 2):
                    extra = "," + " ".join(str(x) for x in [guess, c, c + 1 if guess == c else c + 2, 7, 8])
                elif top5:
                    extra = ","
                rows.append(f"{key},{guess}{extra}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_score_without_a_source_applies_masks_and_classes_by_key(tmp_path, classes):
    """Release masks are key-computable (entry j <-> class j // 50, file j % 50): applied without a source."""
    from dsi_bench.cli import main
    from dsi_bench.errors import MaskError

    preds = _release_file(tmp_path / "p.csv")
    j = np.arange(50_000)
    masks = tmp_path / "masks.npz"
    np.savez(masks, base=j % 2 == 0, in_the_snow=j % 5 != 0)
    plain = score_predictions(preds, {"class_list": classes})
    assert plain.shifts["base"]["n"] == 100 and plain.shifts["base"]["top1"] == 0.74  # 13 of 50 are wrong
    masked = score_predictions(preds, {"class_list": classes, "masks": masks})
    # base keeps the even files: of 25 per class, 13 are multiples of 4 (wrong); snow drops multiples of 5
    assert masked.shifts["base"]["n"] == 50 and masked.shifts["base"]["correct"] == 2 * 12
    assert masked.shifts["in_the_snow"]["n"] == 80 and masked.shifts["in_the_snow"]["correct"] == 2 * 30
    assert masked["data"]["masks"].startswith("masks.npz:sha256:")
    assert masked["data"]["ignored_masked_predictions"] == 50 + 20
    assert masked["data"]["fingerprint"] != plain["data"]["fingerprint"]
    # the CLI applies --masks and --classes without --source (they used to be ignored: n = every row, masks null)
    out = tmp_path / "r.json"
    assert main(["score", str(preds), "--masks", str(masks), "--results", str(out)]) == 0
    saved = Results.load(out)
    assert saved.shifts["base"]["n"] == 50 and saved["data"]["masks"].startswith("masks.npz:sha256:")
    only0 = _release_file(tmp_path / "only0.csv", classes=(0,))
    assert score_predictions(only0, {"class_list": classes, "classes": "0"}).shifts["base"]["n"] == 50
    with pytest.raises(PredictionsError, match=r"100 samples have no prediction .*'base/0001/00'"):
        score_predictions(only0, {"class_list": classes, "classes": "0-1"})  # class 1 asked for, not predicted
    with pytest.raises(PredictionsError, match=r"100 keys are outside the selection \(classes='0'"):
        score_predictions(preds, {"class_list": classes, "classes": "0"})
    # what cannot be applied is an error, never ignored
    np.savez(tmp_path / "base_only.npz", base=j % 2 == 0)
    with pytest.raises(MaskError, match="no entries for shift 'in_the_snow'"):
        score_predictions(preds, {"class_list": classes, "masks": tmp_path / "base_only.npz"})
    with pytest.raises(SpecError, match="fast_decode= applies to a data source"):
        score_predictions(preds, {"class_list": classes, "fast_decode": True})
    with pytest.raises(SpecError, match="without a source"):
        score_predictions(preds, {"class_list": classes, "root": str(tmp_path)})


def test_score_without_a_source_reports_missing_release_keys(tmp_path, classes):
    """A file in the release's layout lacking some files of a class it covers says how many and which."""
    drop = {f"base/{WNIDS[1]}/{i:02d}.jpg" for i in (3, 7, 49)}
    preds = _release_file(tmp_path / "p.csv", drop=drop)
    with pytest.raises(PredictionsError, match=r"3 samples have no prediction \(base: 3\): 'base/0001/03', "
                                               r"'base/0001/07', 'base/0001/49'.*--allow-missing"):
        score_predictions(preds, {"class_list": classes})
    r = score_predictions(preds, {"class_list": classes}, allow_missing=True)
    assert r.shifts["base"]["n"] == 100 and r["data"]["missing_predictions"] == {"base": 3}
    assert r.shifts["base"]["correct"] == 74 - 3  # 3, 7 and 49 were right: now counted wrong
    assert "missing predictions counted as wrong: base 3" in r.table()
    # masked-out files need no prediction
    j = np.arange(50_000)
    np.savez(tmp_path / "m.npz", base=~np.isin(j, [50 + 3, 50 + 7, 50 + 49]), in_the_snow=j >= 0)
    ok = score_predictions(preds, {"class_list": classes, "masks": tmp_path / "m.npz"})
    assert ok.shifts["base"]["n"] == 97 and ok["data"]["missing_predictions"] == {}


def test_top5_without_a_top5_column_is_not_available(tmp_path, classes, release):
    preds = _release_file(tmp_path / "p.csv")
    r = score_predictions(preds, {"class_list": classes})
    assert r.shifts["base"]["top1"] == 0.74 and r.shifts["base"]["top5"] is None
    assert r["summary"]["metrics"]["top5"]["mean"] is None
    header = r.table(header=False).splitlines()
    col = header[0].split().index("top-5")
    assert header[1].split()[col] == "-"
    with_top5 = score_predictions(_release_file(tmp_path / "t.csv", top5="all"), {"class_list": classes})
    assert with_top5.shifts["base"]["top5"] == 1.0
    with pytest.raises(PredictionsError, match="have a top5 and 50 do not"):
        score_predictions(_release_file(tmp_path / "s.csv", top5="some", shifts=("base",)), {"class_list": classes})
    # against a source too
    star = {"source": "imagenet-star", "root": release, "classes": "0-1", "class_list": classes}
    assert score_predictions(preds, star).shifts["in_the_snow"]["top5"] is None


def test_tables_and_leaderboard_groups_name_masks_decoding_and_data(release, classes, tmp_path):
    from dsi_bench.leaderboard import make_leaderboard

    j = np.arange(50_000)
    masks = tmp_path / "masks.npz"
    np.savez(masks, base=j % 2 == 0, in_the_snow=j % 2 == 0)
    folder = tmp_path / "results"
    plain = run("oracle", release, classes, name="oracle")
    masked = run("oracle", release, classes, masks=masks, name="oracle")
    assert "masks: none (every sample)   decode: full" in plain.table()
    assert f"masks: {masked['data']['masks']}   decode: full" in masked.table()
    plain.save(folder / "plain.json")
    masked.save(folder / "masked.json")
    scored = score_predictions(_release_file(tmp_path / "p.csv", classes=(0, 1, 2)), {"class_list": classes})
    assert "data: predictions file" in scored.table() and "decode: not recorded" in scored.table()
    scored.save(folder / "scored.json")
    paths = make_leaderboard(folder, tmp_path / "board", plots=False)
    md = paths["md"].read_text()
    assert paths["groups"] == 3 and "Data: None" not in md and "None" not in md.split("## ", 1)[1].split("|")[0]
    assert "- Masks: none (every sample)" in md and f"- Masks: {masked['data']['masks']}" in md
    assert f"`{masked['data']['fingerprint']}`" in md and f"`{plain['data']['fingerprint']}`" in md  # in full
    assert "- Data: predictions file" in md and "no source" in md


def test_leaderboard_ties_names_axes_labels_and_html(release, classes, tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the [plots] extra (matplotlib)")
    import matplotlib

    matplotlib.use("Agg")
    from dsi_bench.leaderboard import _robustness_figure, _shift_figure, make_leaderboard
    from dsi_bench.metrics import METRICS

    folder = tmp_path / "results"
    first = run("oracle", release, classes, name="same name")
    first.save(folder / "a.json")
    first.save(folder / "b.json")  # a tie, under the same model name
    m, t = tiny_classifier(seed=0)
    run(m, release, classes, transform=t, name="other").save(folder / "c.json")
    paths = make_leaderboard(folder, tmp_path / "board")
    rows = [r.split(",") for r in paths["csv"].read_text().splitlines()[1:]]
    assert [(r[1], r[2]) for r in rows] == [("1", "same name"), ("1", "same name"), ("3", "other")]
    per_result = sorted(p.name for p in paths["plots"] if p.name.endswith("_shifts.png"))
    assert len(per_result) == 3 and len(set(per_result)) == 3  # no plot overwrites another
    page = paths["html"].read_text()
    for p in paths["plots"]:
        assert f'src="plots/{p.name}"' in page
    lo, hi = first.shifts["in_the_snow"]["top1_ci"]
    assert f'[{100 * lo:.1f}, {100 * hi:.1f}]' in page  # the intervals, not only the values

    # 0% and 100% stay inside the axes, on the scatter and on the per-shift plot
    fig = _robustness_figure([(1.0, 0.0, "perfect base"), (0.0, 1.0, "odd"), (0.7, 0.5, "a")])
    ax = fig.axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    for coll in ax.collections:
        for x, y in coll.get_offsets():
            assert x0 < x < x1 and y0 < y < y1
    perfect = Results(json.loads(json.dumps(first.data)))
    perfect.shifts["base"].update(top1=1.0, top1_ci=[0.97, 1.0])
    perfect.shifts["in_the_snow"].update(top1=0.0, top1_ci=[0.0, 0.03])
    ax = _shift_figure(perfect, ["base", "in_the_snow"], METRICS["top1"]).axes[0]
    assert ax.get_ylim()[0] < 0 and ax.get_ylim()[1] > 100
    # labels of overlapping points do not overlap
    fig = _robustness_figure([(0.8, 0.6, "model one"), (0.8, 0.6, "model two"), (0.801, 0.601, "model three")])
    from matplotlib.text import Text

    fig.canvas.draw()
    boxes = [Text.get_window_extent(a, fig.canvas.get_renderer()) for a in fig.axes[0].texts]  # text, not arrow
    assert len(boxes) == 3
    assert not any(boxes[i].overlaps(boxes[k]) for i in range(3) for k in range(i + 1, 3))
