"""Every name renamed in 0.2 still works, warns, and does what the new name does (removed in 0.3)."""

from __future__ import annotations

import pytest
import torch

from dsi_bench.datasets import ShiftedImageNet
from dsi_bench.testing import FAKE_WNIDS, make_fake_release, oracle_classifier


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_fake_release(tmp_path_factory.mktemp("dep-rel"), shifts=("base", "in_the_snow"), wnids=FAKE_WNIDS,
                             size=16, pattern=True)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_model, tiny_tokens):
    from dsi_bench.build import build_shards
    from dsi_bench.pipeline import PipelineSpec

    out = tmp_path_factory.mktemp("dep") / "shards"
    spec = PipelineSpec(model=str(tiny_model), steps=2, out_size=None, batch_size=4)
    build_shards(out, pipeline=spec, tokens=tiny_tokens, shifts=["base"], classes="0-1", per_class=2,
                 image_format="png", progress=False)
    return out


def test_dataset_model_is_generator(tiny_model, tiny_tokens):
    with pytest.warns(DeprecationWarning, match=r"model=.*generator="):
        old = ShiftedImageNet("base", classes=[0], per_class=1, model=tiny_model, tokens=tiny_tokens, steps=2,
                              cache_dir=False)
    new = ShiftedImageNet("base", classes=[0], per_class=1, generator=tiny_model, tokens=tiny_tokens, steps=2,
                          cache_dir=False)
    assert old.spec == new.spec and old.fingerprint() == new.fingerprint()
    with pytest.raises(TypeError, match="both generator= and its deprecated name model="):
        ShiftedImageNet("base", generator=tiny_model, model="other/model", tokens=tiny_tokens)


def test_evaluate_and_score_old_signatures(release, classes, tmp_path):
    from dsi_bench.evaluate import evaluate
    from dsi_bench.score import score_predictions

    module, transform = oracle_classifier()
    data = {"source": "imagenet-star", "root": release, "classes": "0-2", "class_list": classes}
    new = evaluate(module, data, transform=transform, progress=False, num_workers=0, predictions=tmp_path / "p.csv")
    with pytest.warns(DeprecationWarning) as record:
        old = evaluate(module, "all", source="imagenet-star", root=release, classes="0-2", class_list=classes,
                       transform=transform, progress=False, num_workers=0)
    assert [str(w.message).split(" (deprecated")[0] for w in record if w.category is DeprecationWarning] == [
        "evaluate(classifier, SHIFTS, ...) is now evaluate(classifier, data, shifts=SHIFTS)",
        "passing source, root, classes, class_list to evaluate() directly is deprecated; pass them in data={...}"]
    with pytest.warns(DeprecationWarning) as record:
        positional = evaluate(module, "all", "imagenet-star", release, classes="0-2", class_list=classes,
                              transform=transform, progress=False, num_workers=0)
    assert len([w for w in record if w.category is DeprecationWarning]) == 2
    with pytest.warns(DeprecationWarning, match="model= is now classifier="):
        keyword = evaluate(model=module, data=data, transform=transform, progress=False, num_workers=0)
    assert old.shifts == new.shifts == positional.shifts == keyword.shifts
    assert old["data"]["fingerprint"] == new["data"]["fingerprint"]
    with pytest.warns(DeprecationWarning, match="pass them in data="):
        scored = score_predictions(tmp_path / "p.csv", source="imagenet-star", root=release, classes="0-2",
                                   class_list=classes)
    assert scored.shifts == score_predictions(tmp_path / "p.csv", data).shifts == new.shifts
    with pytest.raises(TypeError, match="both in data= and as a deprecated keyword"):
        evaluate(module, data, root=release)
    with pytest.raises(TypeError, match="unexpected keyword"):
        evaluate(module, data, transfrom=transform)


def test_builders_take_spec_as_pipeline(tiny_model, tiny_tokens, tmp_path):
    from dsi_bench.build import build_shards
    from dsi_bench.folders import generate_folder
    from dsi_bench.pipeline import PipelineSpec

    spec = PipelineSpec(model=str(tiny_model), steps=2, out_size=None, batch_size=4)
    args = dict(tokens=tiny_tokens, classes="0", per_class=1, progress=False)
    with pytest.warns(DeprecationWarning, match="spec= is now pipeline="):
        build_shards(tmp_path / "a", spec=spec, image_format="png", **args)
    build_shards(tmp_path / "b", pipeline=spec, image_format="png", **args)
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    with pytest.warns(DeprecationWarning, match="spec= is now pipeline="):
        generate_folder(tmp_path / "c", spec=spec, cache_dir=False, **args)
    with pytest.raises(TypeError, match="both pipeline= and its deprecated name spec="):
        build_shards(tmp_path / "d", spec=spec, pipeline=spec.replace(steps=3), **args)


def test_learn_tokens_old_names(tiny_model, tmp_path, capsys):
    from PIL import Image

    from dsi_bench.learn import learn_tokens, load_training_data
    from dsi_bench.pipeline import PipelineSpec

    for name in ("tench", "goldfish"):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), (40, 90, 200)).save(tmp_path / "data" / name / "0.png")
    args = dict(resolution=32, classes_per_batch=2, progress=False)
    new = learn_tokens(tmp_path / "data", generator=tiny_model, max_steps=2, **args)
    with pytest.warns(DeprecationWarning) as record:
        old = learn_tokens(tmp_path / "data", base_model=str(tiny_model), steps=2, **args)
    assert {"base_model= is now generator=", "steps= is now max_steps="} <= {
        str(w.message).split(" (")[0].split(": ", 1)[1] for w in record if w.category is DeprecationWarning}
    with pytest.warns(DeprecationWarning, match="spec= is now pipeline="):
        spec_old = learn_tokens(tmp_path / "data", spec=PipelineSpec(model=str(tiny_model)), max_steps=2, **args)
    assert torch.equal(old.embeddings, new.embeddings) and torch.equal(spec_old.embeddings, new.embeddings)
    with pytest.warns(DeprecationWarning, match="class_list"):
        assert load_training_data(tmp_path / "data").classes.names == ["goldfish", "tench"]
    from dsi_bench.cli import main

    assert main(["learn-tokens", "--data", str(tmp_path / "data"), "--model", str(tiny_model), "--steps", "2",
                 "--resolution", "32", "--out", str(tmp_path / "bank.safetensors"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "--model is deprecated, use --generator" in err and "--steps is deprecated, use --max-steps" in err
    from dsi_bench.tokens import TokenBank

    cli_bank = TokenBank.load(tmp_path / "bank.safetensors")
    assert cli_bank.extra["training"]["steps"] == 2 and torch.allclose(cli_bank.embeddings, new.embeddings)


def test_hub_clip_and_token_names(shards, tmp_path, tiny_tokens):
    from dsi_bench.clip_metric import clip_filter_shards
    from dsi_bench.hub import export_dataset
    from dsi_bench.testing import save_tiny_clip
    from dsi_bench.tokens import TokenBank, load_tokens

    with pytest.warns(DeprecationWarning, match="fmt= is now dataset_format="):
        assert export_dataset(shards, tmp_path / "x", fmt="parquet")["format"] == "parquet"
    clip = save_tiny_clip(tmp_path / "clip")
    with pytest.warns(DeprecationWarning) as record:
        out = clip_filter_shards(shards, model=str(clip), masks_path=tmp_path / "m.npz", scores_path=tmp_path / "s.npz",
                                 progress=False)
    assert len([w for w in record if w.category is DeprecationWarning]) == 3
    assert out["masks"] == tmp_path / "m.npz" and (tmp_path / "s.npz").is_file()
    bank = TokenBank.load(tiny_tokens)
    with pytest.warns(DeprecationWarning, match="classes= is now class_list="):
        again = load_tokens(tiny_tokens, classes=list(bank.class_infos))
    assert again.fingerprint == bank.fingerprint


def test_convert_release_moved(release, classes, tmp_path):
    import dsi_bench.release as release_module
    from dsi_bench.convert import convert_release

    with pytest.warns(DeprecationWarning, match="dsi_bench.convert.convert_release"):
        old = release_module.convert_release
    assert old is convert_release


@pytest.mark.parametrize("old, new", [
    (["generate", "--model", "{model}", "--format", "jpg"], ["generate", "--generator", "{model}", "--image-format",
                                                             "jpg"]),
    (["build", "--model", "{model}", "--format", "png"], ["build", "--generator", "{model}", "--image-format", "png"]),
])
def test_cli_generation_flags(old, new, tiny_model, tiny_tokens, tmp_path, capsys):
    from dsi_bench.cli import main

    common = ["--tokens", str(tiny_tokens), "--classes", "0", "--per-class", "1", "--steps", "2", "--out-size", "0",
              "-q"]
    fill = [a.replace("{model}", str(tiny_model)) for a in old]
    assert main(fill + common + ["--out", str(tmp_path / "old")]) == 0
    err = capsys.readouterr().err
    assert "--model is deprecated, use --generator" in err and "--format is deprecated, use --image-format" in err
    assert main([a.replace("{model}", str(tiny_model)) for a in new] + common + ["--out", str(tmp_path / "new")]) == 0
    assert "deprecated" not in capsys.readouterr().err
    old_files = sorted(p.relative_to(tmp_path / "old").as_posix() for p in (tmp_path / "old").rglob("*.*")
                       if p.suffix in (".png", ".jpg", ".tar"))
    new_files = sorted(p.relative_to(tmp_path / "new").as_posix() for p in (tmp_path / "new").rglob("*.*")
                       if p.suffix in (".png", ".jpg", ".tar"))
    assert old_files == new_files and old_files
    for f in old_files:
        assert (tmp_path / "old" / f).read_bytes() == (tmp_path / "new" / f).read_bytes()


def test_cli_eval_tokens_learn_flags(release, classes, tmp_path, capsys, tiny_tokens, monkeypatch):
    import json

    from dsi_bench.cli import main

    table = tmp_path / "classes.json"
    table.write_text(json.dumps([{"index": c.index, "wnid": c.wnid, "common_name": c.name} for c in classes]))
    monkeypatch.setenv("DSI_BENCH_IMAGENET_CLASSES", str(table))
    base = ["eval", "--source", "imagenet-star", "--root", str(release), "--classes", "0-2", "-q"]
    assert main(base + ["--model", "dsi_bench.testing:oracle_classifier", "--workers", "0",
                        "--results", str(tmp_path / "old.json")]) == 0
    err = capsys.readouterr().err
    assert "--model is deprecated, use --classifier" in err and "--workers is deprecated, use --num-workers" in err
    assert main(base + ["--classifier", "dsi_bench.testing:oracle_classifier", "--num-workers", "0",
                        "--results", str(tmp_path / "new.json")]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("old", "new"))
    assert a["shifts"] == b["shifts"]
    assert main(["tokens", str(tiny_tokens), "--base-model", "x/y", "--out", str(tmp_path / "t.safetensors")]) == 0
    assert "--base-model is deprecated, use --generator" in capsys.readouterr().err
    from dsi_bench.tokens import TokenBank

    assert TokenBank.load(tmp_path / "t.safetensors").base_model == "x/y"
