"""The ImageNet* release: layout, masks bound by key, missing files, conversion, published counts."""

import zipfile

import numpy as np
import pytest

from dsi_bench.convert import convert_release, release_shifts
from dsi_bench.datasets import ShiftedImageNet
from dsi_bench.errors import MaskError, ReleaseError
from dsi_bench.masks import PUBLISHED_KEPT, Masks, load_release_masks
from dsi_bench.shards import verify_shards
from dsi_bench.testing import FAKE_WNIDS, make_fake_release

WNIDS = FAKE_WNIDS


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_fake_release(tmp_path_factory.mktemp("release"), shifts=("base", "in_the_snow"), wnids=WNIDS)


@pytest.fixture(scope="module")
def masks_file(tmp_path_factory):
    """Release-format masks (pickled dict in .npy, 1000 classes x 50): class c, file i kept unless (c + i) % 4 == 0."""
    j = np.arange(50_000)
    arrays = {s: ((j // 50 + j % 50) % 4 != 0) for s in ("base", "in_the_snow")}
    path = tmp_path_factory.mktemp("masks") / "masks.npy"
    np.save(path, arrays, allow_pickle=True)
    return path


def test_reads_the_release_layout(release, classes):
    assert release_shifts(release) == ["base", "in_the_snow"]
    ds = ShiftedImageNet("in the snow", source="imagenet-star", root=release, classes="0-2", class_list=classes)
    assert len(ds) == 150 and ds.targets[:50] == [0] * 50 and ds.targets[-1] == 2
    assert ds.keys[51] == "in_the_snow/0001/01"
    meta = ds.metadata(51)
    assert meta["release_key"] == "in_the_snow/n01443537/01.jpg" and meta["wnid"] == "n01443537"
    image, label = ds[51]
    assert image.size == (64, 64) and label == 1
    # the same bytes, as a folder instead of a zip, and as a single zip
    with zipfile.ZipFile(release / "in_the_snow.zip") as z:
        z.extractall(release.parent / "unzipped")
    folder = ShiftedImageNet("in_the_snow", source="imagenet-star", root=release.parent / "unzipped",
                             classes="0-2", class_list=classes)
    single = ShiftedImageNet("in_the_snow", source="imagenet-star", root=release / "in_the_snow.zip",
                             classes="0-2", class_list=classes)
    assert folder.keys == ds.keys == single.keys
    assert np.array_equal(np.asarray(folder[51][0]), np.asarray(image))


def test_masks_bound_by_key_and_a_deleted_file_is_named(release, classes, masks_file, tmp_path):
    ds = ShiftedImageNet("base", source="imagenet-star", root=release, classes="0-2", class_list=classes,
                         masks=masks_file)
    expected = [f"base/{c:04d}/{i:02d}" for c in range(3) for i in range(50) if (c + i) % 4]
    assert ds.keys == expected and ds.masked_out == 150 - len(expected)
    assert ds.metadata(0)["keep"] is True
    # Remove one file from a copy: the loader names it; skipping keeps every later mask on its own file.
    broken = tmp_path / "broken"
    broken.mkdir()
    with zipfile.ZipFile(release / "base.zip") as src, zipfile.ZipFile(broken / "base.zip", "w") as dst:
        for item in src.infolist():
            if item.filename != "base/n01443537/07.jpg":
                dst.writestr(item, src.read(item))
    with pytest.raises(ReleaseError, match=r"1 file missing: class 1 n01443537 \(goldfish\): 07\.jpg"):
        ShiftedImageNet("base", source="imagenet-star", root=broken, classes="0-2", class_list=classes)
    skipped = ShiftedImageNet("base", source="imagenet-star", root=broken, classes="0-2", class_list=classes,
                              masks=masks_file, missing="skip")
    assert skipped.keys == [k for k in expected if k != "base/0001/07"]
    i = skipped.keys.index("base/0001/09")
    assert skipped.metadata(i)["release_key"] == "base/n01443537/09.jpg"
    assert np.array_equal(np.asarray(skipped[i][0]), np.asarray(ds[ds.keys.index("base/0001/09")][0]))


def test_fetching_masks_offline_names_the_local_option(release, classes):
    from dsi_bench.errors import OfflineError

    with pytest.raises(OfflineError, match="pass masks=PATH"):
        ShiftedImageNet("base", source="imagenet-star", root=release, classes="0-2", class_list=classes, masks=True)


def test_release_bad_input(release, classes, tmp_path):
    with pytest.raises(ReleaseError, match="does not exist"):
        ShiftedImageNet("base", source="imagenet-star", root=tmp_path / "nope", class_list=classes)
    with pytest.raises(ReleaseError, match="'in_the_fog' is not in the release .*found: base, in_the_snow"):
        ShiftedImageNet("in the fog", source="imagenet-star", root=release, class_list=classes)
    with pytest.raises(ReleaseError, match="150 files missing|missing: class 3"):
        ShiftedImageNet("base", source="imagenet-star", root=release, classes="0-5", class_list=classes)
    odd = tmp_path / "odd"
    make_fake_release(odd, shifts=("base",), wnids=WNIDS[:1], per_class=50, as_zip=False)
    (odd / "base" / "n01440764" / "notes.txt").write_text("hello")
    with pytest.raises(ReleaseError, match=r"unexpected file 'n01440764/notes.txt' \(not an image\)"):
        ShiftedImageNet("base", source="imagenet-star", root=odd, classes="0", class_list=classes)
    (odd / "base" / "n01440764" / "notes.txt").unlink()
    (odd / "base" / "n01440764" / "03.jpg").write_bytes(b"not a jpeg")
    ds = ShiftedImageNet("base", source="imagenet-star", root=odd, classes="0", class_list=classes)
    with pytest.raises(ReleaseError, match="n01440764/03.jpg' does not decode"):
        ds[3]


def test_convert_keeps_bytes_and_flags(release, classes, masks_file, tmp_path):
    out = tmp_path / "star"
    summary = convert_release(release, out, masks=masks_file, class_list=classes, classes="0-2",
                              samples_per_shard=64, progress=False)
    assert summary.complete and summary.manifest["shifts"]["base"] == {
        "samples": 150, "shards": 3, "bytes": summary.manifest["shifts"]["base"]["bytes"]}
    assert verify_shards(out).ok
    kept = ShiftedImageNet("base", source="shards", root=out, masks=True)
    direct = ShiftedImageNet("base", source="imagenet-star", root=release, classes="0-2", class_list=classes,
                             masks=masks_file)
    everything = ShiftedImageNet("base", source="shards", root=out)
    assert kept.keys == direct.keys and len(everything) == 150
    assert kept.metadata(0)["release_key"] == "base/n01440764/01.jpg"
    with zipfile.ZipFile(release / "base.zip") as z:
        original = z.read("base/n01484850/49.jpg")
    entry = everything.entries[-1]
    assert everything.backend.store.read_member(entry.shard, entry.image_offset, entry.image_size) == original
    again = convert_release(release, out, masks=masks_file, class_list=classes, classes="0-2",
                            samples_per_shard=64, progress=False)
    assert again.shards_built == 0 and again.shards_skipped == 6


def test_npy_masks_never_execute_pickles(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    evil = tmp_path / "evil.npy"
    np.save(evil, np.array({"base": Boom()}, dtype=object), allow_pickle=True)
    with pytest.raises(MaskError, match="builtins.exec.*refusing"):
        load_release_masks(evil)
    with pytest.raises(MaskError, match="not a multiple of 50"):
        Masks.from_release({"base": np.ones(49, bool)})
    with pytest.raises(MaskError, match="does not exist"):
        load_release_masks(tmp_path / "none.npy")


def test_published_mask_counts(shared_data):
    """The release's masks (pickled .npy and plain .npz) reproduce the published kept counts."""
    for name in ("imagenet_star_masks.npy", "imagenet_star_masks.npz"):
        masks = Masks.load(shared_data / name)
        assert masks.shifts() == set(PUBLISHED_KEPT)
        assert {s: masks.kept(s) for s in PUBLISHED_KEPT} == PUBLISHED_KEPT
    # and the package's table is the published one (../shared/docs/REFERENCE.md, "kept images per shift")
    import re

    reference = (shared_data.parent / "docs" / "REFERENCE.md").read_text()
    published = {s: int(n.replace(",", "")) for s, n in re.findall(r"([a-z_]+): ([0-9]{2},[0-9]{3})", reference)}
    assert published == PUBLISHED_KEPT


def test_real_masks_bind_to_real_wordnet_ids(shared_data, tmp_path):
    """With the real class table, the first release class folder (tench) gets the first 50 mask entries."""
    from dsi_bench.classes import imagenet_classes

    table = imagenet_classes(shared_data / "imagenet_classes.json")
    root = make_fake_release(tmp_path / "rel", shifts=("embroidery",), wnids=(table[0].wnid,), per_class=50)
    ds = ShiftedImageNet("embroidery", source="imagenet-star", root=root, classes="0", class_list=table,
                         masks=shared_data / "imagenet_star_masks.npz")
    arr = np.load(shared_data / "imagenet_star_masks.npz")["embroidery"][:50]
    assert ds.keys == [f"embroidery/0000/{i:02d}" for i in range(50) if arr[i]]
