"""Readers serve only checked bytes (issue 12, items 6-8 and the file:// part of 14).

A small hostile-shard factory writes shard folders by hand (no model, no build): tars whose
manifest records match them, so what refuses a sample is the readers' own checks.
"""

import hashlib
import io
import json
import os
import re
import tarfile

import numpy as np
import pytest

from dsi_bench import shards as shards_mod
from dsi_bench.datasets import ShiftedImageNet
from dsi_bench.errors import ShardError
from dsi_bench.layout import plan_digest, shift_summary
from dsi_bench.shards import ShardSet, verify_shards


# ---------------------------------------------------------------------- hostile-shard factory
def png(colour: int) -> bytes:
    """An 8x8 grey PNG stored uncompressed: every colour gives the same number of bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (colour,) * 3).save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


def sample(key: str, colour: int = 100, *, label=None, meta=None) -> list[tuple[str, bytes]]:
    """The members of one well-formed sample (``label``/``meta`` override the .cls and .json bytes)."""
    c = int(key.split("/")[1])
    cls = str(c if label is None else label).encode()
    js = json.dumps({"key": key, "class_index": c, "keep": True}).encode() if meta is None else meta
    return [(f"{key}.cls", cls), (f"{key}.json", js), (f"{key}.png", png(colour))]


def write_tar(path, members, *, kind=tarfile.REGTYPE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.type = len(data), 0, tarfile.REGTYPE
            if kind != tarfile.REGTYPE and name.endswith(".png"):
                info.type, info.size, info.linkname = kind, 0, "/etc/hostname"
                data = b""
            tf.addfile(info, io.BytesIO(data))


def shard_folder(root, shards: dict, **tar_kw):
    """A shard folder: ``shards`` maps ``shift/shift-00000k.tar`` -> members; the manifest matches the tars
    as a build writes it (per-shift summary, totals, the plan's hash)."""
    records, counts = [], {}
    for rel, members in shards.items():
        write_tar(root / rel, members, **tar_kw)
        data = (root / rel).read_bytes()
        keys = list(dict.fromkeys(name.rpartition(".")[0] for name, _ in members))
        shift = rel.split("/")[0]
        counts[shift] = counts.get(shift, -1) + 1
        records.append({"path": rel, "shift": shift, "index": counts[shift], "samples": len(keys),
                        "first_key": keys[0], "last_key": keys[-1], "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()})
    (root / "manifest.json").write_text(json.dumps({
        "format": "dsi-bench/shards", "version": 1, "plan": {}, "plan_hash": plan_digest({}),
        "shifts": shift_summary(records), "samples": sum(r["samples"] for r in records), "shards": records}))
    return root


def good_folder(root):
    """Two shards of shift base, two samples each (classes 0 and 1)."""
    return shard_folder(root, {
        "base/base-000000.tar": sample("base/0000/00", 10) + sample("base/0000/01", 20),
        "base/base-000001.tar": sample("base/0001/00", 30) + sample("base/0001/01", 40),
    })


def tamper(path) -> None:
    """Replace the first image of a shard by another PNG of the same length (wrong pixels, same size);
    the mtime moves on as a real later write's would."""
    data = path.read_bytes()
    old = data.index(png(10) if png(10) in data else png(30))
    new = data[:old] + png(250) + data[old + len(png(250)):]
    assert len(new) == len(data) and new != data
    st = path.stat()
    path.write_bytes(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def pixels(ds, i):
    return np.asarray(ds[i][0])[0, 0, 0]


def forget_verified() -> None:
    """As in a process that never opened the shards: none verified."""
    getattr(shards_mod, "_VERIFIED", {}).clear()


@pytest.fixture(autouse=True)
def fresh_process_state():
    """Each test starts like a new process: no shard verified or indexed in memory."""
    forget_verified()
    shards_mod._MEMO.clear()
    yield
    forget_verified()
    shards_mod._MEMO.clear()


# ---------------------------------------------------------------------- item 6: checked bytes
def test_a_damaged_shard_is_refused_on_open_unless_verify_is_off(tmp_path):
    root = good_folder(tmp_path / "shards")
    tamper(root / "base" / "base-000000.tar")
    with pytest.raises(ShardError, match=r"shard base/base-000000.tar: its sha256 differs from the manifest .*"
                                         r"refusing to serve it; run `dsi-bench verify` and rebuild it"):
        ShiftedImageNet("base", source="shards", root=root)
    unchecked = ShiftedImageNet("base", source="shards", root=root, verify=False)  # the documented opt-out
    assert pixels(unchecked, 0) == 250 and pixels(unchecked, 2) == 30
    assert not verify_shards(root).ok


def test_a_shard_changed_after_opening_is_hashed_again_before_any_read(tmp_path):
    root = good_folder(tmp_path / "shards")
    ds = ShiftedImageNet("base", source="shards", root=root)
    assert [pixels(ds, i) for i in range(4)] == [10, 20, 30, 40]
    tamper(root / "base" / "base-000001.tar")
    assert pixels(ds, 0) == 10  # the other shard is unchanged: still served
    with pytest.raises(ShardError, match="base-000001.tar: its sha256 differs"):
        ds[2]
    with pytest.raises(ShardError, match="base-000001.tar: its sha256 differs"):
        list(ds.stream())


def test_streaming_hashes_while_reading_and_fails_at_the_end_of_the_bad_shard(tmp_path):
    """A reader that did not verify the shard itself (a spawned DataLoader worker) hashes as it reads."""
    root = good_folder(tmp_path / "shards")
    ds = ShiftedImageNet("base", source="shards", root=root)
    tamper(root / "base" / "base-000001.tar")
    forget_verified()  # as in a (spawned) process that never opened the shards
    given = []
    with pytest.raises(ShardError, match="shard base/base-000001.tar: its sha256 differs"):
        for _image, _label, key in ds.stream(return_key=True):
            given.append(key)
    # the good shard in full, the bad one up to its end: the error comes before its last sample
    assert given == ["base/0000/00", "base/0000/01", "base/0001/00"]
    record = ShardSet(root).shards("base")[1]
    forget_verified()
    with pytest.raises(ShardError, match="base-000001.tar: its sha256 differs"):
        keys = [s["__key__"] for s in ShardSet(root).iter_shard(record)]
    keys = [s["__key__"] for s in ShardSet(root, verify=False).iter_shard(record)]
    assert keys == ["base/0001/00", "base/0001/01"]


def test_eval_stops_on_a_damaged_shard_and_records_checked_reads(tmp_path, capsys):
    from dsi_bench.cli import main

    root = good_folder(tmp_path / "shards")
    args = ["eval", "--classifier", "dsi_bench.testing:oracle_classifier", "--source", "shards", "--root", str(root),
            "--num-workers", "0", "-q"]
    assert main([*args, "--results", str(tmp_path / "ok.json")]) == 0
    assert json.loads((tmp_path / "ok.json").read_text())["data"]["checked_reads"] is True
    capsys.readouterr()
    tamper(root / "base" / "base-000000.tar")
    assert main([*args, "--results", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "base/base-000000.tar: its sha256 differs" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad.json").exists()
    assert main([*args, "--no-verify", "--results", str(tmp_path / "unchecked.json")]) == 0
    document = json.loads((tmp_path / "unchecked.json").read_text())
    assert document["data"]["checked_reads"] is False and document["run"]["dataset"]["verify"] is False


# ---------------------------------------------------------------------- item 7: labels, keys, names, index cache
HOSTILE = {
    "label outside the label space": (sample("base/1000/00"), r"1000/00.cls says class 1000, outside the label space"),
    "label disagreeing with the key": (sample("base/0001/00", label=2),
                                       r"base/0001/00.cls says class 2 but the key is of class 1"),
    "label that is not a number": (sample("base/0001/00", label="1e0"), r"base/0001/00.cls holds '1e0', not a class"),
    "duplicate member": (sample("base/0000/00") + [("base/0000/00.png", png(5))],
                         r"member 'base/0000/00.png' appears twice"),
    "sample split in two": (sample("base/0000/00")[:2] + sample("base/0000/01") + sample("base/0000/00")[2:],
                            r"the members of sample 'base/0000/00' are not together",
                            r"sample 'base/0000/00' lacks an image"),  # streaming sees the first part end
    "invalid json": (sample("base/0000/00", meta=b"{not json"), r"base/0000/00.json is not valid JSON"),
    "json that is not an object": (sample("base/0000/00", meta=b"[1, 2]"), r"base/0000/00.json holds a list"),
    "json about another sample": (sample("base/0000/00", meta=b'{"key": "base/0000/07"}'),
                                  r"base/0000/00.json records key 'base/0000/07'"),
    "member name with ..": ([(n.replace("base/", "base/../"), d) for n, d in sample("base/0000/00")],
                            r"member 'base/../0000/00.cls' is not a sample of shift 'base'"),
    "absolute member name": ([("/" + n, d) for n, d in sample("base/0000/00")],
                             r"member '/base/0000/00.cls' is not a sample of shift 'base'"),
    "member of another shift": (sample("in_the_snow/0000/00"), r"member 'in_the_snow/0000/00.cls' is not a sample"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_samples_are_refused_by_name_in_the_reader_and_in_verify(case, tmp_path):
    members, message, *streamed = HOSTILE[case]
    streamed = r"shard base/base-000000.tar: .*" + (streamed[0] if streamed else message)
    root = shard_folder(tmp_path / "shards", {"base/base-000000.tar": members})
    for options in ({}, {"verify": False}):
        with pytest.raises(ShardError, match=r"shard base/base-000000.tar: .*" + message):
            ShiftedImageNet("base", source="shards", root=root, **options)
        shards_mod._MEMO.clear()
    with pytest.raises(ShardError, match=streamed):
        list(ShardSet(root).iter_shard(ShardSet(root).records[0]))
    report = verify_shards(root, decode=False)
    assert not report.ok and list(report.problems) == ["base/base-000000.tar"]
    assert re.search(streamed, report.problems["base/base-000000.tar"])


def test_a_symlink_member_is_refused(tmp_path):
    root = shard_folder(tmp_path / "shards", {"base/base-000000.tar": sample("base/0000/00")}, kind=tarfile.SYMTYPE)
    with pytest.raises(ShardError, match=r"member 'base/0000/00.png' is not a regular file"):
        ShiftedImageNet("base", source="shards", root=root)
    assert "is not a regular file" in verify_shards(root).problems["base/base-000000.tar"]


def test_a_header_that_does_not_parse_is_not_taken_for_the_end_of_the_shard(tmp_path):
    root = good_folder(tmp_path / "shards")
    path = root / "base" / "base-000000.tar"
    data = bytearray(path.read_bytes())
    second = data.index(b"base/0000/01.cls")
    data[second + 148 : second + 156] = b"0000000\0"  # a wrong header checksum: tarfile would stop quietly here
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"base-000000.tar is damaged: the tar header at byte \d+ does not parse"):
        ShiftedImageNet("base", source="shards", root=root, verify=False)


def cached_index(root, k: int = 0):
    """Where the index of shard ``k`` of a folder is cached on disk."""
    store = ShardSet(root)
    record = store.records[k]
    return shards_mod._IndexCache(store.root, record, store.root.stamp(record["path"])).path


@pytest.mark.parametrize("verify", [True, False])
def test_an_edited_index_cache_cannot_change_what_is_served(tmp_path, verify):
    root = good_folder(tmp_path / "shards")
    assert len(ShiftedImageNet("base", source="shards", root=root, masks=True, verify=verify)) == 4
    path = cached_index(root)
    document = json.loads(path.read_text())
    for row in document["samples"]:
        row[2] = False  # keep flag: masks every sample out
        row[1] = 1 - row[1]  # label
    path.write_text(json.dumps(document))
    shards_mod._MEMO.clear()
    ds = ShiftedImageNet("base", source="shards", root=root, masks=True, verify=verify)
    assert len(ds) == 4 and ds.targets == [0, 0, 1, 1] and pixels(ds, 1) == 20
    assert json.loads(path.read_text())["samples"][0][2] is True  # rebuilt from the shard


def test_an_index_cache_with_wrong_offsets_is_rebuilt_or_caught_by_the_header_check(tmp_path):
    root = good_folder(tmp_path / "shards")
    ShiftedImageNet("base", source="shards", root=root, verify=False)
    path = cached_index(root)
    document = json.loads(path.read_text())
    a, b = document["samples"]
    a[4:6], b[4:6] = b[4:6], a[4:6]  # swap the two images
    path.write_text(json.dumps(document))
    shards_mod._MEMO.clear()
    ds = ShiftedImageNet("base", source="shards", root=root, verify=False)
    assert [pixels(ds, i) for i in range(2)] == [10, 20]


# ---------------------------------------------------------------------- item 8: verify that checks nothing
def test_verify_that_would_check_nothing_is_an_error(tmp_path, capsys):
    from dsi_bench.cli import main

    root = good_folder(tmp_path / "shards")
    with pytest.raises(ShardError, match=r"shift 'in_the_snoww' is not in .* \(it holds: base\)"):
        verify_shards(root, shifts=["base", "in_the_snoww"])
    assert main(["verify", str(root), "--shifts", "in_the_fog", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'in_the_fog' is not in" in err and len(err.splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.json").write_text(json.dumps({"format": "dsi-bench/shards", "version": 1, "plan": {},
                                                     "plan_hash": plan_digest({}), "shifts": {}, "samples": 0,
                                                     "shards": []}))
    with pytest.raises(ShardError, match="lists no shards: there is nothing to verify"):
        verify_shards(empty)
    assert main(["verify", str(empty), "-q"]) == 2
    assert "lists no shards" in capsys.readouterr().err
    assert main(["verify", str(root), "-q"]) == 0
    assert "all 2 shards (4 samples) match" in capsys.readouterr().out


# ---------------------------------------------------------------------- item 14/17: shard-folder URLs
def test_file_urls_name_local_absolute_paths_and_other_urls_are_refused(tmp_path):
    root = good_folder(tmp_path / "shards")
    local = ShiftedImageNet("base", source="shards", root=root)
    for url in (f"file://localhost{root}", f"file://{root}"):
        ds = ShiftedImageNet("base", source="shards", root=url)
        assert ds.keys == local.keys and np.array_equal(np.asarray(ds[3][0]), np.asarray(local[3][0]))
    with pytest.raises(ShardError, match=r"names the host 'elsewhere'; a file:// URL must name a local absolute"):
        ShardSet(f"file://elsewhere{root}")
    with pytest.raises(ShardError, match=r"'nosuchscheme://bucket/shards': cannot open nosuchscheme:// URLs"):
        ShardSet("nosuchscheme://bucket/shards")


# ---------------------------------------------------------------------- fuzz: any flipped byte
@pytest.mark.parametrize("verify", [True, False])
def test_a_flipped_byte_anywhere_is_refused_with_a_typed_error_never_served_or_a_traceback(tmp_path_factory, verify):
    """verify=True: every flip is refused by name; verify=False: a ShardError or data, never another exception."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    clean = good_folder(tmp_path_factory.mktemp("clean") / "shards")
    size = (clean / "base" / "base-000000.tar").stat().st_size

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(position=st.integers(0, size - 1), mask=st.integers(1, 255))
    def check(position, mask):
        root = tmp_path_factory.mktemp("fuzz") / "shards"
        good_folder(root)
        path = root / "base" / "base-000000.tar"
        data = bytearray(path.read_bytes())
        data[position] ^= mask
        path.write_bytes(bytes(data))
        forget_verified()
        shards_mod._MEMO.clear()
        assert not verify_shards(root).ok
        try:
            ds = ShiftedImageNet("base", source="shards", root=root, verify=verify)
            [ds[i] for i in range(len(ds))]
        except ShardError as e:
            assert "base-000000.tar" in str(e) and "\n" not in str(e)
        else:
            assert not verify, "a damaged shard was served with verify=True"

    check()


def test_verify_and_the_readers_agree_on_the_keys_a_shard_holds(tmp_path):
    """A manifest whose first/last keys were edited is refused by the readers, so verify must fail it too."""
    root = good_folder(tmp_path / "shards")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["shards"][0]["first_key"] = "base/0000/01"
    (root / "manifest.json").write_text(json.dumps(manifest))
    report = verify_shards(root)
    assert not report.ok
    assert "holds samples base/0000/00..base/0000/01 but the manifest lists base/0000/01..base/0000/01" in str(report)
    with pytest.raises(ShardError, match="replaced"):
        len(ShiftedImageNet("base", source="shards", root=root))
