"""The CLIP metric on a tiny real CLIP: scores, tokens vs names, the keep rule, masks into datasets."""

import numpy as np
import pytest
from PIL import Image

from dsi_bench.clip_metric import clip_filter_shards, clip_scores, keep_mask
from dsi_bench.errors import TokenBankError


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from dsi_bench.testing import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def images():
    return [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)) for i in range(3)]


def test_scores_are_deterministic_and_use_tokens_when_they_fit(tiny_clip, tiny_tokens, images):
    from dsi_bench.tokens import load_tokens

    bank = load_tokens(tiny_tokens)
    args = (images, ["a photo of a <tench-0>"] * 3, [None, "a photo of a <tench-0> in the snow", "x"])
    a = clip_scores(*args, clip=str(tiny_clip), tokens=bank)
    b = clip_scores(*args, clip=str(tiny_clip), tokens=bank)
    assert a["text"] == "learned tokens"
    assert np.array_equal(a["object_score"], b["object_score"])
    assert np.isnan(a["shift_gain"][0]) and not np.isnan(a["shift_gain"][1])
    assert np.all(np.abs(a["object_score"]) <= 1)
    names = clip_scores(images, ["a photo of a tench"] * 3, [None] * 3, clip=str(tiny_clip))
    assert names["text"] == "class names"
    wide = bank.__class__(np.ones((2, 64), np.float32), bank.class_infos[:2])
    with pytest.raises(TokenBankError, match="32-d text tower but the tokens are 64-d"):
        clip_scores(images, ["a"] * 3, [None] * 3, clip=str(tiny_clip), tokens=wide, use_tokens=True)
    assert clip_scores(images, ["a"] * 3, [None] * 3, clip=str(tiny_clip), tokens=wide)["text"] == "class names"


def test_keep_rule():
    keep = keep_mask([0.3, 0.1, 0.3, 0.3], [np.nan, np.nan, 0.02, -0.01], object_threshold=0.2, shift_threshold=0.0)
    assert keep.tolist() == [True, False, True, False]
    with pytest.warns(DeprecationWarning, match="shift_margin= is now shift_threshold="):
        assert keep_mask([0.3], [0.1], 0.2, shift_margin=0.2).tolist() == [False]


def test_clip_filter_masks_round_trip_into_datasets(tiny_clip, tiny_model, tiny_tokens, tmp_path):
    from dsi_bench.build import build_shards
    from dsi_bench.cli import main
    from dsi_bench.datasets import ShiftedImageNet
    from dsi_bench.pipeline import PipelineSpec

    spec = PipelineSpec(model=str(tiny_model), steps=2, out_size=None, batch_size=4)
    out = tmp_path / "shards"
    build_shards(out, pipeline=spec, tokens=tiny_tokens, shifts=["base", "in the snow"], classes="0-2", per_class=4,
                 samples_per_shard=6, image_format="png", progress=False)
    # a threshold in the middle of the scores, so that some samples are kept and some dropped
    probe = clip_filter_shards(out, clip=str(tiny_clip), rule="token-gain", tokens=tiny_tokens, object_threshold=-1,
                               shift_threshold=-1, progress=False)
    scores = np.load(probe["scores"])
    assert list(scores["keys"][:2]) == ["base/0000/00", "base/0000/01"] and scores["keep"].all()
    cut = float(np.median(scores["object_score"]))
    result = clip_filter_shards(out, clip=str(tiny_clip), rule="token-gain", tokens=tiny_tokens,
                                object_threshold=cut, shift_threshold=-1, progress=False)
    kept, n = result["kept"]["in_the_snow"]
    assert n == 12 and 0 < kept < 12 and result["text"] == "learned tokens"
    ds = ShiftedImageNet("in the snow", source="shards", root=out, masks=result["masks"])
    assert len(ds) == kept and ds.masked_out == 12 - kept
    expected = [k for k, s in zip(scores["keys"], scores["object_score"]) if k.startswith("in_the_snow/") and s >= cut]
    assert ds.keys == expected
    assert main(["clip-filter", str(out), "--clip", str(tiny_clip), "--rule", "token-gain", "--tokens",
                 str(tiny_tokens), "-q", "--masks", str(tmp_path / "m.npz")]) == 0
    assert (tmp_path / "m.npz").is_file()


# ---------------------------------------------------------------------- item 1: pooling at the end-of-text token
@pytest.fixture(scope="module")
def legacy_clip(tmp_path_factory):
    """A tiny CLIP whose text config says eos_token_id=2, as SD2's and the LAION ViT-H copies do."""
    from dsi_bench.testing import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "legacy-clip", eos_token_id=2)


def test_text_features_pool_at_end_of_text_whatever_the_config_says(legacy_clip, tiny_tokens, images):
    import torch

    from dsi_bench.clip_metric import ClipScorer
    from dsi_bench.tokens import load_tokens

    bank = load_tokens(tiny_tokens)
    scorer = ClipScorer(str(legacy_clip), tokens=bank)
    assert scorer.model.config.text_config.eos_token_id == 2 and scorer.text_mode == "learned tokens"
    texts = ["a photo of a <tench-0>", "a photo of a <tench-0> in the snow"]
    # transformers' own path pools at argmax(input_ids) = the injected token: both texts look the same
    batch = scorer.processor.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        legacy = scorer.model.get_text_features(**batch)
    legacy = getattr(legacy, "pooler_output", legacy)
    assert torch.equal(legacy[0], legacy[1])
    ours = scorer.text_features(texts)
    assert not torch.allclose(ours[0], ours[1], atol=1e-3)
    # and what ours is: the hidden state at the first end-of-text, projected
    ids = batch["input_ids"]
    with torch.no_grad():
        hidden = scorer.model.text_model(input_ids=ids, attention_mask=batch["attention_mask"]).last_hidden_state
    eos = (ids == scorer.processor.tokenizer.eos_token_id).int().argmax(-1)
    expected = torch.nn.functional.normalize(scorer.model.text_projection(hidden[torch.arange(2), eos]), dim=-1)
    assert torch.allclose(ours, expected, atol=1e-5)
    # so the token-gain rule's shift statistic is not identically 0
    out = clip_scores(images[:2], [texts[0]] * 2, [texts[1]] * 2, clip=str(legacy_clip), tokens=bank)
    assert np.all(np.abs(out["shift_gain"]) > 1e-4)


# ---------------------------------------------------------------------- items 2-3: the reference rule, converted shards
@pytest.fixture(scope="module")
def converted(tmp_path_factory, classes):
    """The fake release (base + in_the_snow, classes 0-2, 50 files each), and converted to shards (no templates)."""
    from dsi_bench.convert import convert_release
    from dsi_bench.testing import make_fake_release

    root = tmp_path_factory.mktemp("star")
    release = make_fake_release(root / "release", shifts=("base", "in_the_snow"), size=40)
    convert_release(release, root / "shards", class_list=classes, classes="0-2", progress=False)
    return release, root / "shards"


def test_reference_rule_is_the_default_class_name_and_object_free_caption(tiny_clip, converted, classes, tiny_tokens,
                                                                          tmp_path):
    import json

    from dsi_bench.clip_metric import rule_captions
    from dsi_bench.datasets import ShiftedImageNet

    assert rule_captions("reference", "in the snow", "tench") == ("a photo of a tench", "a photo in the snow")
    assert rule_captions("reference", "base", "tench") == ("a photo of a tench", None)
    assert rule_captions("token-gain", "oil_painting", "tench", "<tench-0>") == (
        "a photo of a <tench-0>", "an oil painting of a <tench-0>")
    _, shards = converted
    out = clip_filter_shards(shards, clip=str(tiny_clip), shifts=["in_the_snow"], scores_out=tmp_path / "s.npz",
                             masks_out=tmp_path / "m.npz", progress=False)
    assert out["rule"] == "reference" and out["text"] == "class names"
    scores = np.load(tmp_path / "s.npz")
    ds = ShiftedImageNet("in_the_snow", source="shards", root=shards)
    assert list(scores["keys"]) == ds.keys
    picked = [0, 60, 149]
    images = [ds[i][0] for i in picked]
    names = [classes[ds.targets[i]].name for i in picked]
    direct = clip_scores(images, [f"a photo of a {n}" for n in names], ["a photo in the snow"] * 3, clip=str(tiny_clip))
    assert np.allclose(scores["object_score"][picked], direct["object_score"], atol=1e-5)
    assert np.allclose(scores["shift_score"][picked], direct["shift_score"], atol=1e-5)
    # rule and thresholds are recorded in both outputs
    for path in (tmp_path / "s.npz", tmp_path / "m.npz"):
        settings = json.loads(str(np.load(path)["settings"]))
        assert settings["rule"] == "reference" and settings["thresholds"]["object_threshold"] == 0.2
        assert settings["thresholds"]["shift_threshold"] == 0.2 and settings["thresholds"]["calibrated"] is False
    from dsi_bench.errors import SpecError

    with pytest.raises(SpecError, match="tokens are not used"):
        clip_filter_shards(shards, clip=str(tiny_clip), tokens=tiny_tokens, progress=False)
    with pytest.raises(SpecError, match="unknown CLIP rule"):
        clip_filter_shards(shards, clip=str(tiny_clip), rule="token_gian", progress=False)


def test_converted_shards_get_the_catalog_caption_and_template(tiny_clip, converted, tiny_tokens, tmp_path):
    """Converted release shards record no shift template: the shift's texts come from the catalog by id."""
    _, shards = converted
    ref = clip_filter_shards(shards, clip=str(tiny_clip), scores_out=tmp_path / "r.npz", masks_out=tmp_path / "rm.npz",
                             progress=False)
    r = np.load(tmp_path / "r.npz")
    snow = np.char.startswith(r["keys"].astype(str), "in_the_snow/")
    assert np.isnan(r["shift_score"][~snow]).all() and not np.isnan(r["shift_score"][snow]).any()
    assert not np.allclose(r["shift_score"][snow], r["object_score"][snow])
    assert ref["kept"]["in_the_snow"][1] == 150
    gain = clip_filter_shards(shards, clip=str(tiny_clip), rule="token-gain", tokens=tiny_tokens,
                              scores_out=tmp_path / "g.npz", masks_out=tmp_path / "gm.npz", progress=False)
    g = np.load(tmp_path / "g.npz")
    assert gain["text"] == "learned tokens"
    assert np.all(np.abs(g["shift_score"][snow]) > 1e-4)  # 0.1 scored base prompt vs base prompt: exactly 0
    assert np.array_equal(g["shift_gain"], g["shift_score"], equal_nan=True)


# ---------------------------------------------------------------------- item 2: calibration
def _rule_fixture(rng, per_shift_cut):
    """Scores with gaps around known thresholds, and masks made by the rule."""
    obj, stat, shifts = [], [], []
    for shift in ["base", *per_shift_cut]:
        o = rng.uniform(0, 1, 4000)
        o = o[(o < 0.45) | (o > 0.55)][:3000]
        obj.append(o)
        if shift == "base":
            stat.append(np.full(len(o), np.nan))
        else:
            c = per_shift_cut[shift]
            s = rng.uniform(-0.5, 0.5, 4000)
            stat.append(s[np.abs(s - c) > 0.05][:3000])
        shifts += [shift] * len(o)
    obj, stat, shifts = np.concatenate(obj), np.concatenate(stat), np.array(shifts)
    cut = np.array([per_shift_cut.get(s, 0) for s in shifts])
    released = (obj >= 0.5) & (np.isnan(stat) | (stat >= cut))
    return obj, stat, shifts, released


def test_fit_thresholds_recovers_a_known_rule():
    from dsi_bench.clip_metric import fit_thresholds

    rng = np.random.default_rng(0)
    obj, stat, shifts, released = _rule_fixture(rng, {"in_the_snow": 0.1, "at_night": 0.1, "embroidery": 0.1})
    cal = fit_thresholds(obj, stat, shifts, released)
    assert cal.mode == "global" and cal.accuracy == 1.0
    assert 0.45 < cal.thresholds.object < 0.55 and 0.05 < cal.thresholds.shift < 0.15
    for shift in ["base", "in_the_snow", "at_night", "embroidery"]:
        a = cal.agreement[shift]
        assert a["accuracy"] == 1.0 and a["kept_fitted"] == a["kept_released"] == int(released[shifts == shift].sum())
    # per-shift thresholds: recovered by the per-shift fit; the global fit cannot, and says so
    obj, stat, shifts, released = _rule_fixture(rng, {"in_the_snow": -0.2, "at_night": 0.1, "embroidery": 0.3})
    per = fit_thresholds(obj, stat, shifts, released, mode="per-shift")
    assert per.accuracy == 1.0 and 0.45 < per.thresholds.object < 0.55
    for shift, cut in {"in_the_snow": -0.2, "at_night": 0.1, "embroidery": 0.3}.items():
        assert abs(per.thresholds.per_shift[shift] - cut) < 0.05
    assert per.alternatives["global"]["accuracy"] < 0.99
    glob = fit_thresholds(obj, stat, shifts, released)
    assert glob.accuracy < 0.99 and glob.alternatives["per-shift"]["accuracy"] == 1.0


def test_thresholds_file_round_trip_and_overrides(tmp_path):
    import json

    from dsi_bench.clip_metric import Thresholds, fit_thresholds
    from dsi_bench.errors import SpecError

    rng = np.random.default_rng(1)
    obj, stat, shifts, released = _rule_fixture(rng, {"in_the_snow": 0.1})
    cal = fit_thresholds(obj, stat, shifts, released)
    (tmp_path / "c.json").write_text(json.dumps(cal.to_dict()))
    loaded = Thresholds.load(tmp_path / "c.json")
    assert loaded.object == pytest.approx(cal.thresholds.object) and loaded.to_dict()["calibrated"] is True
    assert np.array_equal(loaded.keep(obj, stat, shifts), released)
    with pytest.raises(SpecError, match="not a CLIP calibration file"):
        Thresholds.load(tmp_path / "nope.json")
    with pytest.raises(SpecError, match="finite"):
        Thresholds(object=float("nan"))


def test_clip_calibrate_command_recovers_the_masks_of_a_rule(tiny_clip, converted, classes, tmp_path, monkeypatch,
                                                             capsys):
    """End to end on a tiny fake release: score it, make release-format masks (pickled .npy, 1000 classes)
    from a threshold rule on those scores, and the command must fit thresholds that reproduce them."""
    import json

    from dsi_bench.cli import main
    from dsi_bench.clip_metric import calibrate_thresholds

    release, _ = converted
    table = tmp_path / "classes.json"
    table.write_text(json.dumps([{"index": c.index, "wnid": c.wnid, "common_name": c.name} for c in classes]))
    monkeypatch.setenv("DSI_BENCH_IMAGENET_CLASSES", str(table))
    everything = {s: np.ones(50_000, bool) for s in ("base", "in_the_snow")}
    np.savez(tmp_path / "all.npz", **everything)
    probe = calibrate_thresholds(release, tmp_path / "all.npz", classes="0-2", clip=str(tiny_clip),
                                 scores_out=tmp_path / "probe.npz", progress=False)
    assert probe.agreement["all"]["accuracy"] == 1.0  # keep-all is reproduced by thresholds below every score
    scores = np.load(tmp_path / "probe.npz")
    keys, obj, stat = scores["keys"].astype(str), scores["object_score"], scores["shift_score"]
    t_obj = float(np.median(obj))
    t_shift = float(np.median(stat[~np.isnan(stat)]))
    keep = (obj >= t_obj) & (np.isnan(stat) | (stat >= t_shift))
    arrays = {s: np.ones(50_000, bool) for s in ("base", "in_the_snow")}
    for k, flag in zip(keys, keep):
        shift, c, i = k.split("/")
        arrays[shift][int(c) * 50 + int(i)] = flag
    np.save(tmp_path / "masks.npy", arrays, allow_pickle=True)  # the release's format: a pickled dict
    out = tmp_path / "cal.json"
    assert main(["clip-calibrate", str(release), "--masks", str(tmp_path / "masks.npy"), "--classes", "0-2",
                 "--clip", str(tiny_clip), "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "in_the_snow" in text and "100.00" in text
    doc = json.loads(out.read_text())
    assert doc["agreement"]["all"]["accuracy"] == 1.0
    for shift in ("base", "in_the_snow"):
        a = doc["agreement"][shift]
        expected = int(keep[np.char.startswith(keys, shift)].sum())
        assert a["n"] == 150 and a["kept_fitted"] == a["kept_released"] == expected
    fitted = doc["thresholds"]
    below, above = obj[obj < t_obj].max(), obj[obj >= t_obj].min()
    assert below < fitted["object_threshold"] <= above and fitted["rule"] == "reference"
    assert doc["settings"]["rule"] == "reference" and doc["settings"]["classes"] == 3
    # the fitted thresholds drive clip-filter
    assert main(["clip-filter", str(converted[1]), "--clip", str(tiny_clip), "--thresholds", str(out), "-q",
                 "--masks-out", str(tmp_path / "m.npz")]) == 0
    assert "calibrated" not in capsys.readouterr().out.split("kept per shift")[0].replace("not calibrated", "")
    from dsi_bench.masks import Masks

    filtered = Masks.load(tmp_path / "m.npz")
    assert all(filtered.get(k) == bool(f) for k, f in zip(keys, keep))
    # bad input: one line, exit 2
    assert main(["clip-calibrate", str(release), "--masks", str(tmp_path / "none.npy"), "--clip", str(tiny_clip),
                 "-q"]) == 2
    assert "does not exist" in capsys.readouterr().err
