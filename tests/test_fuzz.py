"""Property tests: random damage to shards, manifests and prediction CSVs.

Whatever the damage, the outcome is one of two things: a one-line typed error (a
:class:`~dsi_bench.errors.DsiBenchError`, which the CLI prints as one line with exit code 2), or a
result identical to what the clean input gives (for a CSV: what its rows say, read independently).
Never a traceback, never wrong data served, never a file changed outside the output folder.

The default run draws a fixed, derandomized set of examples (stable on CI); ``make test-slow``
draws many more.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsi_bench import shards as shards_mod
from dsi_bench.convert import convert_release
from dsi_bench.datasets import ShiftedImageNet
from dsi_bench.errors import DsiBenchError
from dsi_bench.evaluate import evaluate
from dsi_bench.layout import key_class, key_index
from dsi_bench.score import score_predictions
from dsi_bench.testing import fake_imagenet_classes, make_fake_release, oracle_classifier

FAST = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

CLASS_LIST = fake_imagenet_classes()
SHIFTS = ("base", "in_the_snow")
#: Values a hand-edited or damaged file might hold where the package expects something else.
HOSTILE_VALUES = [None, True, -1, 0, 1.5, float("inf"), 10 ** 30, "", "x", "../../outside.tar", "/etc/hostname",
                  "base/../../x.tar", "file:///etc/hostname", "nan", [], {}, ["a"], {"a": 1}, "0" * 64]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Shards converted from a small patterned release, their clean results and predictions CSV."""
    root = tmp_path_factory.mktemp("fuzz")
    release = make_fake_release(root / "release", shifts=SHIFTS, per_class=4, size=16, pattern=True)
    out = root / "shards"
    convert_release(release, out, class_list=CLASS_LIST, classes="0-2", samples_per_shard=5, progress=False,
                    missing="skip")
    predictions = root / "predictions.csv"
    results = _evaluate(out, predictions=predictions)
    pixels = {shift: _pixels(out, shift) for shift in SHIFTS}
    return _Clean(shards=out, results=results.shifts, csv=predictions.read_bytes(), pixels=pixels)


class _Clean(dict):
    def __repr__(self):  # hypothesis prints fixtures with a failing example: keep it short
        return f"<clean shards at {self['shards']}>"


def _evaluate(root, **kw):
    model, transform = oracle_classifier()
    data = {"source": "shards", "root": root, "class_list": CLASS_LIST}
    return evaluate(model, data, transform=transform, progress=False, num_workers=0, **kw)


def _pixels(root, shift):
    ds = ShiftedImageNet(shift, source="shards", root=root, class_list=CLASS_LIST)
    return {key: np.asarray(ds[i][0]).tobytes() for i, key in enumerate(ds.keys)}


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _check_error(error: BaseException) -> None:
    assert isinstance(error, DsiBenchError), f"untyped {type(error).__name__}: {error}"
    assert "\n" not in str(error) and str(error).strip(), f"not one line: {str(error)!r}"


class _Copy:
    """A fresh copy of the clean shards (a new path: no index or memo from another example applies)."""

    def __init__(self, clean):
        self.clean = clean
        self.tmp = Path(tempfile.mkdtemp(prefix="dsi-fuzz-"))
        self.root = self.tmp / "shards"
        shutil.copytree(clean["shards"], self.root)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shards_mod._MEMO.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def read_everything(self) -> None:
        """Evaluate and read every sample by random access and streaming; each must match the clean data."""
        before = _snapshot(self.tmp)
        clean_before = _snapshot(self.clean["shards"])
        try:
            try:
                results = _evaluate(self.root)
            except Exception as e:  # noqa: BLE001 - the property is about which exceptions escape
                _check_error(e)
            else:
                assert results.shifts == self.clean["results"], "damaged shards gave different results"
            for shift in SHIFTS:
                try:
                    served = _pixels(self.root, shift)
                    streamed = {key: np.asarray(image).tobytes() for image, _, key in
                                ShiftedImageNet(shift, source="shards", root=self.root,
                                                class_list=CLASS_LIST).stream(return_key=True)}
                except Exception as e:  # noqa: BLE001
                    _check_error(e)
                else:
                    assert served == self.clean["pixels"][shift], f"wrong pixels served for {shift}"
                    assert streamed == self.clean["pixels"][shift], f"wrong pixels streamed for {shift}"
        finally:
            assert _snapshot(self.tmp) == before, "a reader changed a file"
            assert _snapshot(self.clean["shards"]) == clean_before


# -- shard bytes --------------------------------------------------------------------------------------

damage = st.tuples(
    st.sampled_from(["flip", "truncate", "append", "zero-block", "swap-blocks", "member"]),
    st.floats(0, 1, exclude_max=True),  # where, as a fraction of the file
    st.integers(1, 255),  # which bits / how many bytes
)


def _damage(data: bytes, how: str, where: float, n: int) -> bytes:
    data = bytearray(data)
    at = int(where * len(data))
    if how == "member" and data[257:262] == b"ustar":  # a byte inside one tar member (image, label, metadata)
        members = [m for m in tarfile.open(fileobj=io.BytesIO(bytes(data))).getmembers() if m.size]
        member = members[int(where * len(members))]
        data[member.offset_data + n % member.size] ^= 0x01
    elif how in ("flip", "member"):
        data[at] ^= n
    elif how == "truncate":
        del data[at:]
    elif how == "append":
        data += bytes([n]) * n
    elif how == "zero-block":
        block = at // 512 * 512
        data[block:block + 512] = bytes(len(data[block:block + 512]))
    else:  # swap two 512-byte blocks (tar headers or contents move)
        a, b = at // 512 * 512, (at // 512 * 512 + 512 * (1 + n % 3)) % max(len(data), 1) // 512 * 512
        data[a:a + 512], data[b:b + 512] = data[b:b + 512], data[a:a + 512]
    return bytes(data)


def _shard_files(root: Path) -> list[Path]:
    return sorted(root.glob("*/*.tar"))


def _shard_bytes_property(clean, which, how):
    with _Copy(clean) as copy:
        target = _shard_files(copy.root)[which % len(_shard_files(copy.root))]
        data = target.read_bytes()
        changed = _damage(data, *how)
        if changed == data:
            return
        target.write_bytes(changed)
        copy.read_everything()


@FAST
@given(which=st.integers(0, 100), how=damage)
def test_damaged_shard_bytes_give_a_typed_error_or_the_clean_result(clean, which, how):
    _shard_bytes_property(clean, which, how)


@pytest.mark.slow
@MANY
@given(which=st.integers(0, 100), how=damage)
def test_damaged_shard_bytes_many(clean, which, how):
    _shard_bytes_property(clean, which, how)


# -- manifests ----------------------------------------------------------------------------------------

def _paths(obj, prefix=()):
    """Every (path, value) in a JSON tree."""
    yield prefix, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _paths(v, (*prefix, k))


def _edit(obj, path, value, delete: bool):
    if not path:
        return value
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj


manifest_edit = st.tuples(st.integers(0, 10 ** 6), st.sampled_from(HOSTILE_VALUES), st.booleans())


def _manifest_property(clean, edit, byte_damage):
    with _Copy(clean) as copy:
        path = copy.root / "manifest.json"
        if byte_damage is not None:
            path.write_bytes(_damage(path.read_bytes(), *byte_damage))
        else:
            pick, value, delete = edit
            manifest = json.loads(path.read_text())
            paths = [p for p, _ in _paths(manifest)]
            where = paths[pick % len(paths)]
            manifest = _edit(manifest, where, value, delete and bool(where))
            path.write_text(json.dumps(manifest))
        copy.read_everything()


@FAST
@given(edit=manifest_edit, byte_damage=st.none() | damage)
def test_edited_manifests_give_a_typed_error_or_the_clean_result(clean, edit, byte_damage):
    _manifest_property(clean, edit, byte_damage)


@pytest.mark.slow
@MANY
@given(edit=manifest_edit, byte_damage=st.none() | damage)
def test_edited_manifests_many(clean, edit, byte_damage):
    _manifest_property(clean, edit, byte_damage)


# -- prediction CSVs ----------------------------------------------------------------------------------

def _expected_from_rows(data: bytes, keys: set[str]):
    """What the CSV says, read by an independent strict reader: per-shift (n, correct, flips), or None
    where the file is not a complete, unambiguous set of predictions in the label space."""
    try:
        text = data.decode("utf-8-sig")
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except (UnicodeDecodeError, csv.Error):
        return None
    predictions = {}
    for row in rows:
        key, value = row.get("key"), row.get("prediction")
        if key not in keys or key in predictions or value is None or None in row:
            return None
        value, label = value.strip(), (row.get("label") or "").strip()
        if not value.isdigit() or int(value) >= len(CLASS_LIST) or label not in ("", str(key_class(key))):
            return None  # a label, where given, must be the data's label for that key
        predictions[key] = int(value)
    if set(predictions) != keys:
        return None
    right = {key: predictions[key] == key_class(key) for key in keys}
    expected = {}
    for shift in SHIFTS:
        mine = [k for k in keys if k.startswith(shift + "/")]
        flips = None
        if shift != "base":
            flips = sum(right[f"base/{key_class(k):04d}/{key_index(k):02d}"] and not right[k] for k in mine)
        expected[shift] = (len(mine), sum(right[k] for k in mine), flips)
    return expected


csv_damage = st.one_of(
    damage.map(lambda d: ("bytes", d)),
    st.tuples(st.integers(1, 24), st.sampled_from(["key", "label", "prediction", "top5"]),
              st.sampled_from(["", "-1", "1000", "99999999999999999999", "1.5", "nan", " 3", "=cmd", "\ufeff1",
                               "base/0000/00", "base/0000/100", "caf\xe9", "3"])).map(lambda d: ("cell", d)),
    st.tuples(st.integers(1, 24), st.sampled_from(["duplicate", "delete"])).map(lambda d: ("row", d)),
    st.sampled_from(["bom", "latin-1", "crlf"]).map(lambda d: ("file", d)),
)


def _damage_csv(data: bytes, how) -> bytes:
    kind, detail = how
    if kind == "bytes":
        return _damage(data, *detail)
    if kind == "file":
        if detail == "bom":
            return b"\xef\xbb\xbf" + data
        if detail == "crlf":
            return data.replace(b"\n", b"\r\n")
        return data.replace(b"base/0000/00", "base/0000/00\xe9".encode("latin-1"))
    lines = data.decode().splitlines(keepends=True)
    row = detail[0] % (len(lines) - 1) + 1
    if kind == "row":
        if detail[1] == "duplicate":
            lines.insert(row, lines[row])
        else:
            del lines[row]
        return "".join(lines).encode()
    header = lines[0].strip().split(",")
    cells = lines[row].rstrip("\n").split(",")
    cells[header.index(detail[1])] = detail[2]
    lines[row] = ",".join(cells) + "\n"
    return "".join(lines).encode()


def _csv_property(clean, how):
    tmp = Path(tempfile.mkdtemp(prefix="dsi-fuzz-csv-"))
    try:
        path = tmp / "predictions.csv"
        path.write_bytes(_damage_csv(clean["csv"], how))
        keys = {line.split(",")[0] for line in clean["csv"].decode().splitlines()[1:]}
        expected = _expected_from_rows(path.read_bytes(), keys)
        before = _snapshot(tmp)
        try:
            scored = score_predictions(path, {"source": "shards", "root": clean["shards"], "class_list": CLASS_LIST})
        except Exception as e:  # noqa: BLE001
            _check_error(e)
        else:
            assert expected is not None, f"score accepted a file an independent reader refuses: {how}"
            for shift, (n, correct, flips) in expected.items():
                got = scored.shifts[shift]
                assert (got["n"], got["correct"], got["flips"]) == (n, correct, flips), (shift, how)
        assert _snapshot(tmp) == before
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@FAST
@given(how=csv_damage)
def test_damaged_prediction_csvs_give_a_typed_error_or_what_their_rows_say(clean, how):
    _csv_property(clean, how)


@pytest.mark.slow
@MANY
@given(how=csv_damage)
def test_damaged_prediction_csvs_many(clean, how):
    _csv_property(clean, how)
