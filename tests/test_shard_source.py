"""Reading shards: random access, streaming, URLs, pixels equal to synthesis, bad input."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dsi_bench import shards as shards_mod
from dsi_bench.build import build_shards
from dsi_bench.datasets import ShiftedImageNet
from dsi_bench.errors import MaskError, ShardError, SpecError
from dsi_bench.masks import Masks


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model, tiny_tokens):
    from dsi_bench.pipeline import PipelineSpec

    spec = PipelineSpec(model=str(tiny_model), steps=2, out_size=None, batch_size=4)
    out = tmp_path_factory.mktemp("src") / "shards"
    build_shards(out, pipeline=spec, tokens=tiny_tokens, shifts=["base", "in the snow"], classes="0-2,207", per_class=3,
                 samples_per_shard=5, image_format="png", progress=False)
    return out, spec


def to_array(image):
    return torch.from_numpy(np.asarray(image).copy())


def test_png_shards_are_pixel_identical_to_synthesis(built, tiny_tokens):
    out, spec = built
    shards = ShiftedImageNet("in the snow", source="shards", root=out, transform=to_array)
    synth = ShiftedImageNet("in the snow", classes="0-2,207", per_class=3, pipeline=spec, tokens=tiny_tokens,
                            cache_dir=False, transform=to_array)
    assert len(shards) == len(synth) == 12
    assert shards.keys == synth.keys and shards.targets == synth.targets == [0] * 3 + [1] * 3 + [2] * 3 + [207] * 3
    assert shards.class_indices == [0, 1, 2, 207]
    for i in (0, 5, 11):
        a, la = shards[i]
        b, lb = synth[i]
        assert la == lb and torch.equal(a, b)
    meta = shards.metadata(4)
    assert meta["key"] == "in_the_snow/0001/01" and meta["sample_seed"] == synth.metadata(4)["sample_seed"]
    assert "Masks: none" in repr(shards) and "Source: shards" in repr(shards)


def test_selection_by_class_and_per_class(built):
    out, _ = built
    ds = ShiftedImageNet("base", source="shards", root=out, classes="golden retriever,1", per_class=2)
    assert ds.keys == ["base/0001/00", "base/0001/01", "base/0207/00", "base/0207/01"]
    assert ds.targets == [1, 1, 207, 207]


def test_requested_classes_must_be_in_the_shards(built):
    from dsi_bench.errors import ClassSpecError

    out, _ = built
    with pytest.raises(ClassSpecError, match=r"1 requested class has no samples .*: 5 \(electric ray\); it holds "
                                             r"classes 0-2,207"):
        len(ShiftedImageNet("base", source="shards", root=out, classes="0,5"))


def test_index_is_cached_and_not_rebuilt(built, monkeypatch):
    out, _ = built
    ShiftedImageNet("base", source="shards", root=out)  # builds (or loads) the index
    shards_mod._MEMO.clear()

    def refuse(*args, **kwargs):
        raise AssertionError("the tar must not be rescanned when its index is cached")

    monkeypatch.setattr(shards_mod, "_scan_shard", refuse)
    ds = ShiftedImageNet("base", source="shards", root=out)
    assert len(ds) == 12 and ds[3][1] == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_reads_each_sample_once(built, workers):
    out, _ = built
    ds = ShiftedImageNet("in the snow", source="shards", root=out, transform=to_array)
    stream = ds.stream(return_key=True)
    keys = []
    for images, _labels, batch_keys in DataLoader(stream, batch_size=4, num_workers=workers):
        keys += list(batch_keys)
        assert images.shape[1:] == (32, 32, 3)
    assert sorted(keys) == sorted(ds.keys) and len(keys) == len(set(keys)) == 12


def test_stream_equals_random_access(built):
    out, _ = built
    ds = ShiftedImageNet("base", source="shards", root=out, classes="2,207", transform=to_array)
    streamed = {k: (x, y) for x, y, k in ds.stream(return_key=True)}
    assert sorted(streamed) == ds.keys
    for i, key in enumerate(ds.keys):
        x, y = ds[i]
        assert streamed[key][1] == y and torch.equal(streamed[key][0], x)


def test_keyed_masks_filter_both_views(built, tmp_path):
    out, _ = built
    keys = [f"base/{c:04d}/{i:02d}" for c in (0, 1, 2, 207) for i in range(3)]
    keep = [i % 3 != 1 for i in range(12)]
    path = Masks.from_keyed(keys, keep).save(tmp_path / "masks.npz")
    ds = ShiftedImageNet("base", source="shards", root=out, masks=path)
    assert len(ds) == 8 and ds.masked_out == 4 and "base/0000/01" not in ds.keys
    assert sorted(k for _, _, k in ds.stream(return_key=True)) == sorted(ds.keys)
    with pytest.raises(MaskError, match="no entries for shift 'in_the_snow'"):
        ShiftedImageNet("in the snow", source="shards", root=out, masks=path)
    partial = Masks.from_keyed(keys[:6], keep[:6]).save(tmp_path / "partial.npz")
    with pytest.raises(MaskError, match="no entry for sample 'base/0002/00'"):
        len(ShiftedImageNet("base", source="shards", root=out, masks=partial))
    with pytest.raises(MaskError, match="carries no mask flag"):
        len(ShiftedImageNet("base", source="shards", root=out, masks=True))


def test_fsspec_urls_and_hf_paths(built, monkeypatch):
    """file:// URLs, and hf:// through fsspec (an hf filesystem stubbed onto a local folder)."""
    import fsspec
    from fsspec.implementations.dirfs import DirFileSystem

    out, _ = built
    ds = ShiftedImageNet("base", source="shards", root=f"file://{out}")
    assert len(ds) == 12

    class LocalHub(DirFileSystem):
        protocol = "hf"

        def __init__(self, *args, **kwargs):
            super().__init__(path=str(out.parent), fs=fsspec.filesystem("file"))

        @classmethod
        def _strip_protocol(cls, path):
            return path[len("hf://"):] if path.startswith("hf://") else path

    monkeypatch.setitem(sys.modules["fsspec.registry"]._registry, "hf", LocalHub)
    import dsi_bench.online

    monkeypatch.setattr(dsi_bench.online, "hub_unreachable", lambda **kw: None)  # the stub hub is reachable
    hub = ShiftedImageNet("in the snow", source="shards", root=f"hf://{out.name}", transform=to_array)
    local = ShiftedImageNet("in the snow", source="shards", root=out, transform=to_array)
    assert hub.keys == local.keys
    assert torch.equal(hub[7][0], local[7][0])
    assert sorted(k for _, _, k in hub.stream(return_key=True)) == sorted(local.keys)


def test_bad_shard_folders(built, tmp_path):
    out, _ = built
    with pytest.raises(ShardError, match="does not exist"):
        ShiftedImageNet("base", source="shards", root=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no manifest.json"):
        ShiftedImageNet("base", source="shards", root=tmp_path / "empty")
    with pytest.raises(ShardError, match="'in_the_fog' is not in .* base, in_the_snow"):
        ShiftedImageNet("in the fog", source="shards", root=out)
    with pytest.raises(SpecError, match="needs root="):
        ShiftedImageNet("base", source="shards")
    with pytest.raises(SpecError, match="unknown source 'shard'.*'shards'"):
        ShiftedImageNet("base", source="shard", root=out)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    victim = copy / "base" / "base-000001.tar"
    victim.write_bytes(victim.read_bytes()[:4096])
    with pytest.raises(ShardError, match="base-000001.tar is .* bytes but the manifest says"):
        len(ShiftedImageNet("base", source="shards", root=copy))
    with pytest.raises(ShardError, match="base-000001.tar"):
        list(ShiftedImageNet("base", source="shards", root=copy).stream())
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match="not valid JSON"):
        ShiftedImageNet("base", source="shards", root=copy)
    (copy / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ShardError, match="not a dsi-bench shard manifest"):
        ShiftedImageNet("base", source="shards", root=copy)


def test_swapped_shard_is_detected_on_read(built, tmp_path):
    """A shard replaced by another of the same size (another plan) fails the header check, not silently."""
    out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    ds = ShiftedImageNet("base", source="shards", root=copy)
    len(ds)
    shards_mod._MEMO.clear()
    a, b = copy / "base" / "base-000000.tar", copy / "base" / "base-000001.tar"
    assert a.stat().st_size == b.stat().st_size
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    with pytest.raises(ShardError, match="base-000000.tar holds samples base/0001/02..base/0207/00 but the manifest "
                                         "lists base/0000/00..base/0001/01: it was replaced"):
        ShiftedImageNet("base", source="shards", root=copy)[0]


def test_stale_index_is_caught_by_the_header_check(built, tmp_path):
    """Even if an index did not match the file (a copy changed behind our back), reads check tar headers
    (with verify=False too; with the default verify=True the changed file is hashed again before any read)."""
    out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    ds = ShiftedImageNet("base", source="shards", root=copy, verify=False)  # indexed now, before the file changes
    a = copy / "base" / "base-000000.tar"
    data = bytearray(a.read_bytes())
    data[ds.entries[0].image_offset - 512] ^= 0x01  # the first image's tar header name
    a.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="does not match its index"):
        ds[0]
    with pytest.raises(ShardError, match="does not match its index"):
        list(ds.stream())


def test_masks_are_rejected_for_synthesis(tiny_spec, tiny_tokens):
    with pytest.raises(SpecError, match="masks apply to prebuilt sources"):
        ShiftedImageNet("base", classes=[0], per_class=1, pipeline=tiny_spec, tokens=tiny_tokens, masks=True)


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m["shards"].pop(), "summary of 'in_the_snow'"),  # a dropped record would drop its samples
    (lambda m: m["plan"].update(classes=[0, 1]), "does not match the plan_hash"),
    (lambda m: m["shards"][0].update(path="base/base-000001.tar"), "shard 0 of 'base' is 'base/base-000000.tar'"),
    (lambda m: m["shards"][0].update(samples="5"), "no valid sample count"),
    (lambda m: m["shards"][0].update(sha256=None), "no valid sha256"),
    (lambda m: m.update(shards={}), "shard list"),
    (lambda m: m.update(version="1"), "version '1' is not a number"),
    (lambda m: m.update(samples=m["samples"] + 1), "total of"),
])
def test_hand_edited_manifests_are_refused_by_name(built, tmp_path, edit, needle):
    out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="manifest.json") as e:
        ShiftedImageNet("base", source="shards", root=copy)
    assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ShardError, match="manifest.json"):
        shards_mod.ShardSet(copy)  # every reader reads it the same way
