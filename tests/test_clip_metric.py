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
    keep = keep_mask([0.3, 0.1, 0.3, 0.3], [np.nan, np.nan, 0.02, -0.01], object_threshold=0.2, shift_margin=0.0)
    assert keep.tolist() == [True, False, True, False]


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
    probe = clip_filter_shards(out, clip=str(tiny_clip), tokens=tiny_tokens, object_threshold=-1, shift_margin=-1,
                               progress=False)
    scores = np.load(probe["scores"])
    assert list(scores["keys"][:2]) == ["base/0000/00", "base/0000/01"] and scores["keep"].all()
    cut = float(np.median(scores["object_score"]))
    result = clip_filter_shards(out, clip=str(tiny_clip), tokens=tiny_tokens, object_threshold=cut,
                                shift_margin=-1, progress=False)
    kept, n = result["kept"]["in_the_snow"]
    assert n == 12 and 0 < kept < 12 and result["text"] == "learned tokens"
    ds = ShiftedImageNet("in the snow", source="shards", root=out, masks=result["masks"])
    assert len(ds) == kept and ds.masked_out == 12 - kept
    expected = [k for k, s in zip(scores["keys"], scores["object_score"]) if k.startswith("in_the_snow/") and s >= cut]
    assert ds.keys == expected
    assert main(["clip-filter", str(out), "--clip", str(tiny_clip), "--tokens", str(tiny_tokens), "-q",
                 "--masks", str(tmp_path / "m.npz")]) == 0
    assert (tmp_path / "m.npz").is_file()
