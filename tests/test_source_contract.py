"""The contract every registered source keeps, checked the same way for each of them.

Each source in ``dsi_bench.sources.list_sources()`` needs a fixture in ``MAKERS`` below (a
dict of ``ShiftedImageNet`` arguments for a tiny copy of its data); a registered source without
one fails ``test_every_registered_source_has_a_fixture``, so adding a source to the registry adds
it to this suite.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dsi_bench.datasets import ShiftedImageNet
from dsi_bench.errors import DsiBenchError, SpecError
from dsi_bench.masks import Masks
from dsi_bench.sources import list_sources, source_class

SHIFT = "in_the_snow"


def to_tensor(image):
    return torch.from_numpy(np.asarray(image).copy())


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory, tiny_model, tiny_tokens):
    from dsi_bench.build import build_shards
    from dsi_bench.pipeline import PipelineSpec

    spec = PipelineSpec(model=str(tiny_model), steps=2, out_size=None, batch_size=4)
    out = tmp_path_factory.mktemp("contract") / "shards"
    build_shards(out, pipeline=spec, tokens=tiny_tokens, shifts=["base", SHIFT], classes="0-1,207", per_class=3,
                 samples_per_shard=4, image_format="png", progress=False)
    return out


def _synth(tmp_path_factory, request):
    from dsi_bench.pipeline import PipelineSpec

    model, tokens = request.getfixturevalue("tiny_model"), request.getfixturevalue("tiny_tokens")
    spec = PipelineSpec(model=str(model), steps=2, out_size=None, batch_size=4)
    return {"source": "synth", "classes": "0-1,207", "per_class": 3, "pipeline": spec, "tokens": tokens,
            "cache_dir": tmp_path_factory.mktemp("contract-cache")}


def _shards(tmp_path_factory, request):
    return {"source": "shards", "root": request.getfixturevalue("tiny_shards")}


def _release(tmp_path_factory, request):
    from dsi_bench.testing import FAKE_WNIDS, make_fake_release

    root = make_fake_release(tmp_path_factory.mktemp("contract-release"), shifts=("base", SHIFT), wnids=FAKE_WNIDS,
                             per_class=50, size=16)
    return {"source": "imagenet-star", "root": root, "classes": "0-2", "class_list": request.getfixturevalue("classes")}


def _hub(tmp_path_factory, request):
    from dsi_bench.hub import export_dataset

    out = tmp_path_factory.mktemp("contract-hub")
    export_dataset(request.getfixturevalue("tiny_shards"), out, dataset_format="webdataset", repo="lab/tiny")
    return {"source": "hub", "root": out}


#: How to make a tiny dataset of each source (arguments for ShiftedImageNet, without the shift).
MAKERS = {"synth": _synth, "shards": _shards, "imagenet-star": _release, "hub": _hub}


def test_every_registered_source_has_a_fixture():
    missing = [name for name in list_sources() if name not in MAKERS]
    assert not missing, f"add a fixture for source(s) {missing} to MAKERS in {__file__}"


@pytest.fixture(scope="module", params=list_sources())
def args(request, tmp_path_factory):
    maker = MAKERS.get(request.param)
    if maker is None:
        pytest.fail(f"source {request.param!r} has no fixture in MAKERS")
    return maker(tmp_path_factory, request)


def make(args, **changes):
    return ShiftedImageNet(SHIFT, **{**args, **changes})


def test_length_keys_and_labels(args):
    ds = make(args)
    assert len(ds) > 0 and len(ds.keys) == len(ds.targets) == len(ds)
    assert len(set(ds.keys)) == len(ds)
    pattern = re.compile(rf"{SHIFT}/(\d{{4}})/(\d{{2}})")
    for key, label in zip(ds.keys, ds.targets):
        m = pattern.fullmatch(key)
        assert m, key
        assert int(m.group(1)) == label
    assert ds.class_indices == sorted(set(ds.targets))
    assert ds.shift.id == SHIFT and SHIFT in source_class(args["source"]).available_shifts(args.get("root"))
    assert f"Source: {args['source']}" in repr(ds)


def test_per_class_and_classes_select(args):
    ds = make(args)
    first = ds.class_indices[0]
    small = make(args, per_class=2, classes=str(first))
    assert small.keys == [k for k in ds.keys if k.startswith(f"{SHIFT}/{first:04d}/")][:2]
    assert small.targets == [first, first]


@pytest.mark.parametrize("workers", [0, 2])
def test_random_access_equals_streaming(args, workers):
    ds = make(args, per_class=2, transform=to_tensor)
    direct = {ds.key(i): ds[i] for i in range(len(ds))}
    batch = ds.__getitems__(list(range(len(ds))))
    assert all(torch.equal(x, direct[k][0]) and y == direct[k][1] for (x, y), k in zip(batch, ds.keys))
    streamed = {}
    for xs, ys, ks in DataLoader(ds.stream(return_key=True), batch_size=3, num_workers=workers):
        for x, y, k in zip(xs, ys.tolist(), ks):
            assert k not in streamed, f"{k} read twice"
            streamed[k] = (x, y)
    assert sorted(streamed) == sorted(direct)
    for k, (x, y) in direct.items():
        assert streamed[k][1] == y and torch.equal(streamed[k][0], x), k


def test_masks(args, tmp_path):
    ds = make(args)
    if args["source"] == "synth":
        with pytest.raises(SpecError, match="masks apply to prebuilt sources"):
            make(args, masks=tmp_path / "m.npz")
        return
    keep = [i % 2 == 0 for i in range(len(ds))]
    path = Masks.from_keyed(ds.keys, keep).save(tmp_path / "masks.npz")
    masked = make(args, masks=path)
    assert masked.keys == [k for k, f in zip(ds.keys, keep) if f]
    assert masked.masked_out == len(ds) - len(masked)
    assert sorted(k for _, _, k in masked.stream(return_key=True)) == sorted(masked.keys)
    other = Masks.from_keyed([k.replace(SHIFT, "base") for k in ds.keys], keep).save(tmp_path / "other.npz")
    with pytest.raises(DsiBenchError, match=f"no entries for shift '{SHIFT}'"):
        make(args, masks=other)


def test_fingerprint_is_stable_and_follows_the_selection(args):
    a, b = make(args), make(args)
    assert a.fingerprint() == b.fingerprint() and re.fullmatch(r"[0-9a-f]{64}", a.fingerprint())
    assert make(args, per_class=1).fingerprint() != a.fingerprint()


def test_metadata(args):
    ds = make(args)
    for i in (0, len(ds) - 1):
        meta = ds.metadata(i)
        assert isinstance(meta, dict) and meta["key"] == ds.keys[i]
        assert meta.get("class_index", ds.targets[i]) == ds.targets[i]


def test_clear_errors(args, tmp_path):
    if "in_the_fog" not in source_class(args["source"]).available_shifts(args.get("root")):
        with pytest.raises(DsiBenchError, match="in_the_fog"):
            ShiftedImageNet("in the fog", **args)
    with pytest.raises(DsiBenchError, match="Did you mean 'in_the_snow'"):
        ShiftedImageNet("in the snwo", **args)
    foreign = {"missing": "skip"} if args["source"] != "imagenet-star" else {"seed": 3}
    with pytest.raises(SpecError, match="does not apply to source"):
        make(args, **foreign)
    if source_class(args["source"]).root_help is not None:
        with pytest.raises(DsiBenchError):
            make(args, root=tmp_path / "nowhere")
        with pytest.raises(SpecError, match="needs root="):
            make({k: v for k, v in args.items() if k != "root"})
    else:
        with pytest.raises(SpecError, match="takes no root"):
            make(args, root=tmp_path)
