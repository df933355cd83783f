"""Hostile and malformed files (issue 12, items 9-12 and 14): links out of a release, size limits checked
before anything is allocated, image modes, and convert/publish refusing what verify refuses.

The fixture factory below makes each hostile file in a few bytes; nothing here allocates what the
files declare (on the fixed code).
"""

from __future__ import annotations

import io
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsi_bench.build import ShardJob, ShardTask, run_job
from dsi_bench.cli import main
from dsi_bench.convert import convert_release
from dsi_bench.errors import MaskError, ReleaseError, ShardError, TokenBankError
from dsi_bench.hub import export_dataset
from dsi_bench.images import MAX_IMAGE_PIXELS, decode_image, to_rgb
from dsi_bench.masks import MAX_RELEASE_ENTRIES, Masks, load_release_masks
from dsi_bench.release import ReleaseSet
from dsi_bench.shards import verify_shards
from dsi_bench.testing import FAKE_WNIDS, make_fake_release

WNID = FAKE_WNIDS[0]


# ---------------------------------------------------------------------- hostile-fixture factory
def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A tiny valid 1x1 PNG whose header then claims ``width`` x ``height`` px (its CRC fixed)."""
    data = bytearray(encoded(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


def png16(value: int, size: int = 4) -> bytes:
    """A 16-bit greyscale PNG, every pixel ``value`` (0..65535)."""
    return encoded(Image.fromarray(np.full((size, size), value, dtype=np.uint16)), "PNG")


def unpacked_release(root: Path) -> Path:
    """One shift (``base``) of one class, unpacked; returns the class folder."""
    make_fake_release(root, shifts=("base",), wnids=(WNID,), size=16, as_zip=False)
    return root / "base" / WNID


def zip_with(path: Path, members: list[tuple[str, bytes]], compression=zipfile.ZIP_STORED) -> Path:
    """A zip holding ``members`` in order (repeated names allowed: the hostile case)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about a duplicate name
        with zipfile.ZipFile(path, "w", compression) as z:
            for name, data in members:
                z.writestr(name, data)
    return path


def npy_header_only(path: Path, shape: tuple, descr: str = "|b1") -> Path:
    """A ``.npy`` whose header declares ``shape`` and that holds no data (a few hundred bytes)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
    return path


class _SamplesJob(ShardJob):
    """Writes the given samples as one shard of ``base``: a shard folder whose manifest matches its bytes."""

    def __init__(self, samples: list[dict]):
        self.plan = {"kind": "hostile-test", "shifts": [{"id": "base"}], "classes": [0]}
        self._samples = samples

    def tasks(self) -> list[ShardTask]:
        return [ShardTask("base", 0, tuple(range(len(self._samples))))]

    def samples(self, task):
        yield from self._samples


def shards_with(out: Path, images: list[tuple[str, bytes]]) -> Path:
    """A shard folder (manifest, sha256 and all) holding ``(ext, bytes)`` images as class-0 samples."""
    samples = [{"__key__": f"base/0000/{i:02d}", ext: data, "cls": b"0", "json": b"{}"}
               for i, (ext, data) in enumerate(images)]
    run_job(_SamplesJob(samples), out, progress=False)
    return out


def good_jpeg(size: int = 8) -> bytes:
    return encoded(Image.new("RGB", (size, size), (10, 120, 200)), "JPEG")


# ---------------------------------------------------------------------- item 9: links out of a release
def test_release_links_leading_outside_are_refused_by_name(tmp_path, classes, capsys):
    folder = unpacked_release(tmp_path / "release")
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(good_jpeg())  # decodes fine: only the link check can stop it
    (folder / "03.jpg").unlink()
    (folder / "03.jpg").symlink_to(outside)
    with pytest.raises(ReleaseError, match=r"'n01440764/03\.jpg' leads outside .*secret\.jpg"):
        ReleaseSet(tmp_path / "release", "base", classes, classes=[0])
    with pytest.raises(ReleaseError, match=r"03\.jpg' leads outside"):
        convert_release(tmp_path / "release", tmp_path / "out", class_list=classes, classes="0", progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "release"), "--out", str(tmp_path / "cli"), "--classes", "0", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'n01440764/03.jpg' leads outside" in err
    # a class folder linked elsewhere is refused the same way
    (folder / "03.jpg").unlink()
    (folder / "03.jpg").write_bytes(good_jpeg())
    elsewhere = tmp_path / "elsewhere"
    folder.rename(elsewhere)
    folder.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ReleaseError, match=r"'n01440764' leads outside"):
        ReleaseSet(tmp_path / "release", "base", classes, classes=[0])


def test_release_link_inside_the_shift_folder_is_read(tmp_path, classes):
    folder = unpacked_release(tmp_path / "release")
    (folder / "03.jpg").unlink()
    (folder / "03.jpg").symlink_to(folder / "04.jpg")
    release = ReleaseSet(tmp_path / "release", "base", classes, classes=[0])
    assert release.read(release.entries[3]) == (folder / "04.jpg").read_bytes()
    # a file swapped for an outside link after listing is refused when read
    (folder / "05.jpg").unlink()
    (folder / "05.jpg").symlink_to("/etc/hostname")
    with pytest.raises(ReleaseError, match=r"05\.jpg' leads outside"):
        release.load_image(release.entries[5])


# ---------------------------------------------------------------------- item 10: size limits
@pytest.mark.parametrize(("side", "message"), [
    (4097, f"4097 x 4097 px is more than the {MAX_IMAGE_PIXELS} pixels"),  # just over the limit: ours
    (12000, "144000000 pixels"),  # the issue's ~430 MB header: Pillow's warning, made an error
])
def test_image_bomb_refused_from_its_header(side, message):
    data = bomb_png(side, side)
    assert len(data) < 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is only warned about
        with pytest.raises(Image.DecompressionBombError, match=message):
            decode_image(data)


def test_release_bomb_and_huge_files_refused_by_name(tmp_path, classes):
    folder = unpacked_release(tmp_path / "release")
    (folder / "07.jpg").write_bytes(bomb_png(8000, 8000))
    release = ReleaseSet(tmp_path / "release", "base", classes, classes=[0])
    with pytest.raises(ReleaseError, match=r"'n01440764/07\.jpg' does not decode \(8000 x 8000 px"):
        release.load_image(release.entries[7])
    with pytest.raises(ReleaseError, match=r"07\.jpg' does not decode \(8000 x 8000 px"):
        convert_release(tmp_path / "release", tmp_path / "out", class_list=classes, classes="0", progress=False)
    # a zip member declaring more than a release image may hold is refused before it is read
    zipped = zip_with(tmp_path / "base.zip", [(f"base/{WNID}/{i:02d}.jpg", good_jpeg()) for i in range(49)]
                      + [(f"base/{WNID}/49.jpg", bytes(40 << 20))], zipfile.ZIP_DEFLATED)
    assert zipped.stat().st_size < 1 << 20
    with pytest.raises(ReleaseError, match=r"'base/n01440764/49\.jpg' is 41943040 bytes, more than"):
        ReleaseSet(zipped, "base", classes, classes=[0])


def test_masks_declaring_huge_arrays_refused_before_reading(tmp_path):
    npy = npy_header_only(tmp_path / "masks.npy", (10**9,))
    assert npy.stat().st_size < 256
    with pytest.raises(MaskError, match=r"holds a \(1000000000,\) array of bool, expected a dict"):
        load_release_masks(npy)
    # the same header as an .npz member (a zip: compressed data could really be there)
    header = npy_header_only(tmp_path / "h.npy", (10**9,)).read_bytes()
    npz = zip_with(tmp_path / "masks.npz", [("base.npy", header)])
    with pytest.raises(MaskError, match=rf"declares 1000000000 entries .* at most {MAX_RELEASE_ENTRIES} flags"):
        Masks.load(npz)
    short = npy_header_only(tmp_path / "s.npy", (MAX_RELEASE_ENTRIES,)).read_bytes() + b"\1" * 10
    with pytest.raises(MaskError, match=r"declares 50000 bytes of data but holds"):
        Masks.load(zip_with(tmp_path / "short.npz", [("base.npy", short)]))
    keyed_header = npy_header_only(tmp_path / "k.npy", (10**9,), "<U20").read_bytes()
    keyed = zip_with(tmp_path / "keyed.npz", [("keys.npy", keyed_header), ("keep.npy", header)])
    with pytest.raises(MaskError, match=r"'keys' in .* declares 80000000000 bytes of data"):
        Masks.load(keyed)
    # a pickled dict (the release's form) with a longer array than the release has is refused too
    np.save(tmp_path / "long.npy", {"base": np.ones(MAX_RELEASE_ENTRIES + 50, bool)}, allow_pickle=True)
    with pytest.raises(MaskError, match=r"mask for 'base' .* declares 50050 entries"):
        load_release_masks(tmp_path / "long.npy")


def _torch_file(tensor, compression=zipfile.ZIP_STORED) -> bytes:
    """``torch.save`` bytes, rewritten with ``compression`` (torch.load reads deflated files too)."""
    import torch

    buf = io.BytesIO()
    torch.save(tensor, buf)
    src, out = zipfile.ZipFile(buf), io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info))
    return out.getvalue()


def test_tokens_zip_sizes_checked_before_reading(tmp_path):
    import torch

    from dsi_bench.tokens import MAX_TOKEN_FILE_BYTES, TokenBank

    row = _torch_file(torch.zeros(16))
    big = zip_with(tmp_path / "big.zip", [("tokens/0.bin", row), ("tokens/1.bin", bytes(20 << 20))],
                   zipfile.ZIP_DEFLATED)
    assert big.stat().st_size < 1 << 20
    with pytest.raises(TokenBankError, match=rf"tokens/1\.bin is 20971520 bytes, more than the {MAX_TOKEN_FILE_BYTES}"):
        TokenBank.from_release(big)
    # a 5 KB member whose tensor file (deflated inside) declares a 4 MB row
    deflated = _torch_file(torch.zeros(1 << 20), zipfile.ZIP_DEFLATED)
    inner = zip_with(tmp_path / "inner.zip", [("tokens/0.bin", deflated)])
    assert inner.stat().st_size < 16 << 10
    with pytest.raises(TokenBankError, match=r"tokens/0\.bin declares 41\d{5} bytes of tensor data"):
        TokenBank.from_release(inner)
    twice = zip_with(tmp_path / "twice.zip", [("tokens/0.bin", row), ("extra/0.bin", _torch_file(torch.ones(16)))])
    with pytest.raises(TokenBankError, match=r"holds class 0 twice \('tokens/0\.bin' and 'extra/0\.bin'\)"):
        TokenBank.from_release(twice)
    assert TokenBank.from_release(zip_with(tmp_path / "ok.zip", [("tokens/0.bin", row)])).dim == 16


# ---------------------------------------------------------------------- item 11: image modes
def _pixel(image: Image.Image) -> tuple:
    assert image.mode == "RGB"
    return image.getpixel((0, 0))


def _close(a, b, tol=2) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def test_every_image_mode_becomes_the_reference_rgb():
    """Reference conversions: 16/32-bit scaled by 255/65535, float on 0..255, CMYK and palettes as Pillow converts
    them, and transparency composited onto white."""
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putdata([0, 1])
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    cases = {
        "I;16 mid grey": (Image.fromarray(np.full((2, 2), 32768, np.uint16)), (128, 128, 128)),
        "I;16 white": (Image.fromarray(np.full((2, 2), 65535, np.uint16)), (255, 255, 255)),
        "I (32-bit) mid grey": (Image.fromarray(np.full((2, 2), 32768, np.int32), "I"), (128, 128, 128)),
        "F": (Image.fromarray(np.full((2, 2), 127.6, np.float32), "F"), (128, 128, 128)),
        "CMYK cyan": (Image.new("CMYK", (2, 2), (255, 0, 0, 0)), (0, 255, 255)),
        "P": (palette, (10, 20, 30)),
        "P, transparent index": (transparent, (255, 255, 255)),
        "LA, transparent": (Image.new("LA", (2, 2), (0, 0)), (255, 255, 255)),
        "LA, opaque": (Image.new("LA", (2, 2), (40, 255)), (40, 40, 40)),
        "RGBA, half": (Image.new("RGBA", (2, 2), (255, 0, 0, 128)), (255, 127, 127)),
        "1": (Image.new("1", (2, 2), 1), (255, 255, 255)),
        "L": (Image.new("L", (2, 2), 77), (77, 77, 77)),
    }
    wrong = {name: _pixel(to_rgb(im)) for name, (im, want) in cases.items() if not _close(_pixel(to_rgb(im)), want)}
    assert not wrong
    assert _pixel(to_rgb(transparent.crop((1, 0, 2, 1)))) == (200, 100, 50)  # the opaque index keeps its colour


def test_readers_decode_16_bit_cmyk_and_transparent_files_to_the_reference(tmp_path):
    from dsi_bench.learn import _open_rgb

    cmyk = encoded(Image.new("CMYK", (8, 8), (255, 0, 0, 0)), "JPEG", quality=100)
    rgba = encoded(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "PNG")
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)
    transparent_palette = encoded(palette, "PNG", transparency=1)
    files = {"16-bit": (png16(32768), (128, 128, 128)), "cmyk": (cmyk, (0, 255, 255)),
             "rgba": (rgba, (255, 255, 255)), "palette": (transparent_palette, (255, 255, 255))}
    for name, (data, want) in files.items():
        assert _close(_pixel(decode_image(data)), want, tol=3), name
        (tmp_path / name).write_bytes(data)
        assert _close(_pixel(_open_rgb(tmp_path / name)), want, tol=3), name  # learn-tokens' loader


# ---------------------------------------------------------------------- item 12: refuse what verify refuses
def test_verify_refuses_another_format_behind_an_extension(tmp_path):
    png_as_jpg = encoded(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG")
    out = shards_with(tmp_path / "shards", [("jpg", good_jpeg()), ("jpg", png_as_jpg)])
    report = verify_shards(out)
    assert report.problems == {"base/base-000000.tar": "image of 'base/0000/01' does not decode (PNG bytes stored "
                                                      "as .jpg)"}


@pytest.mark.parametrize("bad", ["png bytes", "garbage", "truncated", "bomb"])
def test_convert_refuses_what_verify_would_refuse(tmp_path, classes, bad):
    folder = unpacked_release(tmp_path / "release")
    data = {"png bytes": encoded(Image.new("RGB", (8, 8)), "PNG"), "garbage": b"not an image at all",
            "truncated": (folder / "11.jpg").read_bytes()[:200], "bomb": bomb_png(5000, 5000)}[bad]
    (folder / "11.jpg").write_bytes(data)
    with pytest.raises(ReleaseError, match=r"base in .*'n01440764/11\.jpg' does not decode"):
        convert_release(tmp_path / "release", tmp_path / "out", class_list=classes, classes="0", progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_publish_refuses_shards_that_verify_refuses(tmp_path):
    out = shards_with(tmp_path / "shards", [("jpg", good_jpeg()), ("jpg", b"\xff\xd8 not really a jpeg")])
    assert not verify_shards(out).ok
    with pytest.raises(ShardError, match=r"refusing to publish: shard base/base-000000\.tar fails `dsi-bench "
                                         r"verify` \(image of 'base/0000/01' does not decode"):
        export_dataset(out, tmp_path / "export")
    assert not (tmp_path / "export").exists()


# ---------------------------------------------------------------------- item 14: duplicate members
def test_duplicate_release_members_are_refused_by_name(tmp_path, classes):
    members = [(f"base/{WNID}/{i:02d}.jpg", good_jpeg()) for i in range(50)]
    zipped = zip_with(tmp_path / "base.zip", members + [(f"base/{WNID}/07.jpg", encoded(Image.new("RGB", (8, 8)),
                                                                                          "JPEG"))])
    with pytest.raises(ReleaseError, match=r"holds 1 member name\(s\) twice \('base/n01440764/07\.jpg'\)"):
        ReleaseSet(zipped, "base", classes, classes=[0])
    folder = unpacked_release(tmp_path / "release")
    (folder / "07.jpeg").write_bytes(good_jpeg())
    with pytest.raises(ReleaseError, match=r"'n01440764/07\.jpeg' and 'n01440764/07\.jpg' are both file 07"):
        ReleaseSet(tmp_path / "release", "base", classes, classes=[0])
