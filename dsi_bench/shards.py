"""Shard folders on disk: the manifest, a cached tar-offset index, checked random reads, verification.

Layout of a shard folder (written by :mod:`dsi_bench.build`)::

    DIR/manifest.json                         plan + one record per shard (sha256, bytes, samples)
    DIR/{shift_id}/{shift_id}-{k:06d}.tar     WebDataset shards

Each sample in a shard is ``{key}.{jpg|png}`` (the image), ``{key}.cls`` (the label, decimal)
and ``{key}.json`` (the sample's full metadata), with ``key = {shift}/{class:04d}/{index:02d}``.

Reading. :class:`ShardSet` opens a folder or any fsspec URL (``file://``, ``s3://``,
``hf://datasets/USER/NAME``). Random access uses a per-shard index of tar offsets (built by
reading tar headers and the small ``.cls``/``.json`` members, then cached on disk keyed by the
shard's sha256, size and mtime, with a digest of its rows), checked against the manifest
(sample count, first and last key). The dataset plugin over it is
:mod:`dsi_bench.sources.shards`; the names on disk are in :mod:`dsi_bench.layout`.

Checked reads. Readers serve only what they checked: every member name must be a sample key of
the shard's shift (no absolute names, no ``..``, no duplicates, no links), every label its key's
class and inside the label space, every ``.json`` an object about its sample. With
``verify=True`` (the default) each shard's bytes are hashed and compared with the manifest's
sha256 once per process, the first time the shard is indexed or read (again when its size or
mtime changes; the index is scanned in the same read); sequential readers that find a shard not
yet verified hash it as they read and fail at its end. ``verify=False`` skips the hash only.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ShardError
from .files import contained_path
from .images import IMAGE_EXTENSIONS, decode_error, decode_image
from .layout import (
    MANIFEST,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    key_class,
    plan_digest,
    shard_path,
    shift_summary,
    split_member,
)
from .memo import Memo
from .validate import is_int

if TYPE_CHECKING:
    from typing import BinaryIO

    from PIL import Image

__all__ = [
    "SampleEntry",
    "ShardSet",
    "VerifyReport",
    "verify_shards",
]

logger = logging.getLogger(__name__)

_INDEX_VERSION = 2  # 2: keyed by the shard's sha256 and stamp, rows digested


@dataclass(frozen=True)
class SampleEntry:
    """Where one sample lives: its shard and the byte ranges of its members."""

    key: str
    label: int
    keep: bool | None  # the mask flag recorded in the sample's .json, if any
    shard: str
    image_ext: str
    image_offset: int
    image_size: int
    json_offset: int
    json_size: int


def _file_url_path(url: str) -> Path:
    """The local path of a ``file://`` URL: ``file:///abs`` and ``file://localhost/abs`` (RFC 8089).

    Raises:
        ShardError: a URL naming another host (or a relative path, which reads as a host name).
    """
    from urllib.parse import unquote

    host, _, path = url[len("file://"):].partition("/")
    if host not in ("", "localhost"):
        raise ShardError(f"shard folder URL {url!r} names the host {host!r}; a file:// URL must name a local "
                         "absolute path (file:///ABS/PATH or file://localhost/ABS/PATH), or pass the folder's path")
    return Path("/" + unquote(path))


def _url_fs(url: str, scheme: str):
    """The fsspec filesystem and path of a remote URL.

    Raises:
        ShardError: a scheme fsspec does not know, or whose package is not installed.
        OfflineError: an ``hf://`` URL while offline.
    """
    import fsspec

    if scheme == "hf":
        from .online import check_hub

        check_hub(f"shard folder {url!r}", "download it where you are online (hf download --repo-type dataset "
                  "USER/NAME --local-dir DIR) and pass that folder instead of the URL")
    try:
        return fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as e:
        raise ShardError(f"shard folder {url!r}: cannot open {scheme}:// URLs ({str(e).splitlines()[0]}); pass a "
                         "folder, a file:// URL, or an fsspec URL such as s3:// or hf://datasets/USER/NAME (with "
                         "the package that provides it installed)") from e


# ---------------------------------------------------------------------- file access
class _Root:
    """A local folder or an fsspec URL, with ``open``/``size``/``exists`` on relative paths."""

    def __init__(self, root: str | os.PathLike):
        text = os.fspath(root)
        self.url = text
        scheme = text.partition("://")[0] if "://" in text else None
        if scheme is not None and scheme != "file":
            self.fs, self.path = _url_fs(text, scheme)
            self.local = None
        else:
            self.fs = None
            self.local = _file_url_path(text) if scheme == "file" else Path(text).expanduser()
            self.path = str(self.local)

    def join(self, rel: str) -> str:
        return str(self.local / rel) if self.local is not None else f"{self.path.rstrip('/')}/{rel}"

    def open(self, rel: str) -> BinaryIO:
        if self.local is not None:
            return open(self.local / rel, "rb")
        return self.fs.open(self.join(rel), "rb")

    def exists(self, rel: str = "") -> bool:
        if self.local is not None:
            return (self.local / rel).exists()
        return self.fs.exists(self.join(rel) if rel else self.path)

    def size(self, rel: str) -> int:
        if self.local is not None:
            return (self.local / rel).stat().st_size
        return int(self.fs.size(self.join(rel)))

    def read(self, rel: str) -> bytes:
        with self.open(rel) as f:
            return f.read()

    def stamp(self, rel: str) -> str:
        """What identifies this copy of a file cheaply: size (and mtime for local files)."""
        if self.local is not None:
            st = (self.local / rel).stat()
            return f"{st.st_size}:{st.st_mtime_ns}"
        return str(self.size(rel))


def _read_manifest(root: _Root) -> dict:
    if not root.exists():
        raise ShardError(f"shard folder {root.url!r} does not exist; build one with `dsi-bench build --out DIR`")
    if not root.exists(MANIFEST):
        if root.local is not None and any(root.local.glob("*/metadata.jsonl")):
            raise ShardError(
                f"{root.url!r} is an image folder written by `dsi-bench generate`, not a shard folder; evaluate "
                "the same samples with --source synth and the generate command's settings (they come from the "
                "cache), or write shards with `dsi-bench build --out DIR`"
            )
        raise ShardError(
            f"{root.url!r} has no {MANIFEST}: it is not a finished shard folder. If a build was interrupted, "
            "rerun the same `dsi-bench build` command to finish it"
        )
    try:
        manifest = json.loads(root.read(MANIFEST))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{root.join(MANIFEST)!r} is not valid JSON ({e}); rerun the build to rewrite it") from e
    where = root.join(MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ShardError(f"{where!r} is not a dsi-bench shard manifest (format {found!r}, expected "
                         f"{MANIFEST_FORMAT!r})")
    version = manifest.get("version", 0)
    if not is_int(version):
        raise ShardError(f"{where!r} is damaged: version {version!r} is not a number; rebuild it")
    if version > MANIFEST_VERSION:
        raise ShardError(f"{where!r} has manifest version {version}; this dsi-bench reads up to "
                         f"{MANIFEST_VERSION}: upgrade dsi-bench")
    problem = _manifest_problem(manifest, root.local if root.local is not None else Path("/url-root"), where)
    if problem:
        raise ShardError(f"{where!r} is damaged or was edited by hand: {problem}; rebuild the shards (or restore "
                         "the manifest the build wrote)")
    return manifest


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _manifest_problem(manifest: dict, base: Path, where: str) -> str | None:
    """What makes a manifest unlike anything a build writes (``None``: nothing).

    Checked so that a hand-edited or damaged manifest is one clear error, never a traceback or a
    silently different data set: types and ranges of every field the readers use, every shard path
    exactly where the layout puts it (inside the folder), the plan against its hash, and the per-shift
    and total counts against the shard records (a dropped record changes them).
    """
    plan, records, shifts = manifest.get("plan"), manifest.get("shards"), manifest.get("shifts")
    if not isinstance(plan, dict):
        return "its plan is not an object"
    if manifest.get("plan_hash") != plan_digest(plan):
        return "its plan does not match the plan_hash the build recorded"
    if not isinstance(records, list) or not isinstance(shifts, dict):
        return "its shard list or its per-shift summary is missing"
    indices: dict[str, set[int]] = {}
    for n, r in enumerate(records):
        if not isinstance(r, dict):
            return f"shard record {n} is not an object"
        shift, index, path = r.get("shift"), r.get("index"), r.get("path")
        if not (isinstance(shift, str) and is_int(index) and index >= 0 and isinstance(path, str)):
            return f"shard record {n} has no valid shift, index and path"
        contained_path(base, path, f"shard record in {where!r}")
        if path != shard_path(shift, index):
            return f"shard record {n} names {path!r}, but shard {index} of {shift!r} is {shard_path(shift, index)!r}"
        if not all(is_int(r.get(k)) and r[k] >= 0 for k in ("samples", "bytes")):
            return f"shard record {n} ({path}) has no valid sample count and size"
        if not (isinstance(r.get("sha256"), str) and _SHA256.fullmatch(r["sha256"])):
            return f"shard record {n} ({path}) has no valid sha256"
        if any(not isinstance(r.get(k), (str, type(None))) for k in ("first_key", "last_key")):
            return f"shard record {n} ({path}) has keys that are not text"
        indices.setdefault(shift, set()).add(index)
    totals = shift_summary(records)
    if set(totals) != set(shifts):
        return f"its shard records hold shifts {sorted(totals)} but its summary lists {sorted(shifts)}"
    for shift, t in totals.items():
        summary = shifts[shift]
        if indices[shift] != set(range(t["shards"])):
            return f"the shards of {shift!r} are not numbered 0..{t['shards'] - 1}"
        if not isinstance(summary, dict) or any(summary.get(k) != v for k, v in t.items()):
            return f"the summary of {shift!r} ({summary!r}) does not match its shard records ({t})"
    if manifest.get("samples") != sum(t["samples"] for t in totals.values()):
        return f"its total of {manifest.get('samples')!r} samples does not match its shard records"
    return None


# ---------------------------------------------------------------------- checked reading
_CHUNK = 1 << 20

#: ``(root url, shard path) -> (sha256, stamp)`` of shards whose bytes this process hashed and found
#: equal to the manifest (DataLoader workers started by fork inherit it).
_VERIFIED: dict[tuple[str, str], tuple[str, str]] = {}

#: A sample key as the layout writes it (:func:`dsi_bench.layout.sample_key`): no ``..``, no absolute names.
_KEY = re.compile(r"(?P<shift>[A-Za-z0-9_][A-Za-z0-9_-]*)/\d{4,}/\d{2,}", re.ASCII)


class _HashingReader:
    """A read-only file over a shard that hashes every byte it passes, whatever the reader skips.

    Forward seeks read through the gap (hashing it), so a shard read front to back by offsets is
    checked in the same pass; :meth:`matches` reads the rest and compares with the manifest record.
    """

    def __init__(self, f, record: dict):
        self._f = f
        self.record = record
        self._hash = hashlib.sha256()
        self._pos = 0
        self._hashed = 0  # bytes [0, _hashed) are in the hash

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n) if n is not None and n >= 0 else self._f.read()
        end = self._pos + len(data)
        if end > self._hashed:
            self._hash.update(memoryview(data)[self._hashed - self._pos:])
            self._hashed = end
        self._pos = end
        return data

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            raise OSError("a checked shard reader does not seek from the end")
        target = offset + (self._pos if whence == 1 else 0)
        if target <= self._hashed:
            self._f.seek(target)
            self._pos = target
            return target
        self.seek(self._hashed)
        while self._pos < target and self.read(min(_CHUNK, target - self._pos)):
            pass
        return self._pos

    def matches(self) -> bool:
        """Read to the end; whether the bytes are the manifest's (size and sha256)."""
        self.seek(self._hashed)
        while self.read(_CHUNK):
            pass
        return self._hashed == self.record["bytes"] and self._hash.hexdigest() == self.record["sha256"]


def _damaged(rel: str) -> ShardError:
    return ShardError(f"shard {rel}: its sha256 differs from the manifest (damaged, or a shard from another "
                      "build), refusing to serve it; run `dsi-bench verify` and rebuild it (or restore the file)")


def _members(f, rel: str, shift: str) -> Iterator[tuple[str, str, tarfile.TarInfo, tarfile.TarFile]]:
    """The members of a shard in order, as ``(key, ext, member, tar)``, each name checked.

    Raises:
        ShardError: a member that is not a regular file, a name that is not a sample key of the
            shard's shift (absolute, ``..``, another shift), a name seen twice, or a sample whose
            members are not together.
    """
    seen: set[str] = set()
    done: set[str] = set()
    current = None
    with tarfile.open(fileobj=f, mode="r:") as tf:
        for m in tf:
            key, ext = split_member(m.name)
            match = _KEY.fullmatch(key)
            if not m.isreg() or match is None or match["shift"] != shift or not ext:
                what = "is not a regular file" if not m.isreg() else f"is not a sample of shift {shift!r}"
                raise ShardError(f"shard {rel}: member {m.name!r} {what} (members are {{shift}}/{{class}}/{{index}}"
                                 ".{ext}); refusing to read the shard: rebuild it")
            if m.name in seen:
                raise ShardError(f"shard {rel}: member {m.name!r} appears twice; refusing to read the shard "
                                 "(which copy counts is ambiguous): rebuild it")
            if key != current:
                if key in done:
                    raise ShardError(f"shard {rel}: the members of sample {key!r} are not together; refusing to "
                                     "read the shard: rebuild it")
                done.add(key)
                current = key
            seen.add(m.name)
            yield key, ext, m, tf
        # tarfile ends quietly at a header it cannot parse: only the end-of-archive block may stop it
        f.seek(tf.offset)
        if f.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
            raise ShardError(f"shard {rel} is damaged: the tar header at byte {tf.offset} does not parse; run "
                             "`dsi-bench verify` and rebuild it")


def _sample_fields(rel: str, key: str, has_image: bool, cls: bytes | None, meta: bytes | None) -> tuple[int, dict]:
    """A sample's label and metadata from its ``.cls`` and ``.json`` bytes.

    Raises:
        ShardError: a missing image or label, a label that is not a class index, or metadata that
            is not a JSON object about this sample.
    """
    if not has_image or cls is None:
        raise ShardError(f"shard {rel}: sample {key!r} lacks an image or a .cls label; rebuild the shard")
    text = cls.decode("ascii", "replace").strip()
    if not text.isdigit() or not text.isascii():
        raise ShardError(f"shard {rel}: {key}.cls holds {text[:20]!r}, not a class index; rebuild the shard")
    label = int(text)
    try:
        fields = {} if meta is None else json.loads(meta)
    except (ValueError, UnicodeDecodeError) as e:
        raise ShardError(f"shard {rel}: {key}.json is not valid JSON ({e}); rebuild the shard") from e
    if not isinstance(fields, dict):
        raise ShardError(f"shard {rel}: {key}.json holds a {type(fields).__name__}, not a JSON object; "
                         "rebuild the shard")
    for name, want in (("key", key), ("class_index", key_class(key))):
        if fields.get(name, want) != want:
            raise ShardError(f"shard {rel}: {key}.json records {name} {fields[name]!r} but the sample is {want!r}; "
                             "rebuild the shard")
    if not isinstance(fields.get("keep", False), bool) and fields["keep"] is not None:
        raise ShardError(f"shard {rel}: {key}.json records keep {fields['keep']!r}, not true/false; rebuild it")
    return label, fields


def _check_label(rel: str, key: str, label: int, num_classes: int) -> None:
    """A label must be its key's class and inside the label space.

    Raises:
        ShardError: naming the shard and sample.
    """
    if label != key_class(key):
        raise ShardError(f"shard {rel}: {key}.cls says class {label} but the key is of class {key_class(key)}; "
                         "refusing to serve a mislabelled sample: rebuild the shard")
    if not 0 <= label < num_classes:
        raise ShardError(f"shard {rel}: {key}.cls says class {label}, outside the label space (0..{num_classes - 1}); "
                         "rebuild the shard")


def _read_data(tf: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    return tf.extractfile(m).read()


# ---------------------------------------------------------------------- indexing
def _index_dir() -> Path:
    from .files import default_cache_dir

    return default_cache_dir() / "shard-index"


def _scan_shard(f, rel: str, shift: str) -> list[SampleEntry]:
    """Index a shard by reading its tar headers and small members (images are skipped), checking every name."""
    members: dict[str, dict] = {}
    try:
        for key, ext, m, tf in _members(f, rel, shift):
            parts = members.setdefault(key, {})
            if ext in ("cls", "json"):
                parts[ext] = (m.offset_data, m.size, _read_data(tf, m))
            elif ext in IMAGE_EXTENSIONS:
                if "image" in parts:
                    raise ShardError(f"shard {rel}: sample {key!r} has two images; rebuild the shard")
                parts["image"] = (ext, m.offset_data, m.size)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ShardError(f"shard {rel} is damaged ({e}); run `dsi-bench verify` and rebuild it") from e
    entries = []
    for key, parts in members.items():
        label, meta = _sample_fields(rel, key, "image" in parts, parts.get("cls", (0, 0, None))[2],
                                     parts.get("json", (0, 0, None))[2])
        ext, off, size = parts["image"]
        joff, jsize = parts["json"][:2] if "json" in parts else (0, 0)
        entries.append(SampleEntry(key, label, meta.get("keep"), rel, ext, off, size, joff, jsize))
    return entries


#: Indexes of shards read in this process (a full ImageNet* set is 1,200 shards).
_MEMO = Memo("shard indexes", 4096)


def _rows_digest(rows: list) -> str:
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


class _IndexCache:
    """A shard's index on disk (under the cache dir) and in memory, keyed by the shard's sha256 and stamp.

    The file records the shard's sha256, stamp and a digest of its rows; one that does not match
    (edited, truncated, another shard's) is rebuilt, never trusted. What it serves is checked again
    on every read (tar headers, labels against keys).
    """

    def __init__(self, root: _Root, record: dict, stamp: str):
        self.record, self.stamp = record, stamp
        self.digest = record["sha256"]
        tag = hashlib.sha256(stamp.encode()).hexdigest()[:16]
        self.memo_key = f"{root.url}|{record['path']}|{self.digest}|{tag}"
        self.path = _index_dir() / self.digest[:2] / f"{self.digest}-{tag}.json"

    def memory(self) -> list[SampleEntry] | None:
        """The index held in memory."""
        return _MEMO.get(self.memo_key)

    def load(self) -> list[SampleEntry] | None:
        """The index on disk, or ``None`` when it is missing or does not match (then it is rebuilt)."""
        try:
            data = json.loads(self.path.read_text())
            rows = data["samples"]
            if (data.get("version") != _INDEX_VERSION or data.get("sha256") != self.digest
                    or data.get("stamp") != self.stamp or data.get("digest") != _rows_digest(rows)):
                raise ValueError("the index does not match the shard")
            entries = [SampleEntry(str(r[0]), int(r[1]), None if r[2] is None else bool(r[2]), self.record["path"],
                                   str(r[3]), *(int(x) for x in r[4:8])) for r in rows]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, IndexError) as e:
            logger.info("rebuilding the cached index of %s: %s", self.record["path"], e)
            return None
        _MEMO.put(self.memo_key, entries)
        return entries

    def store(self, entries: list[SampleEntry]) -> None:
        """Hold a freshly scanned index in memory and write it to the disk cache."""
        from .files import atomic_write

        _MEMO.put(self.memo_key, entries)
        rows = [[e.key, e.label, e.keep, e.image_ext, e.image_offset, e.image_size, e.json_offset, e.json_size]
                for e in entries]
        document = {"version": _INDEX_VERSION, "sha256": self.digest, "stamp": self.stamp,
                    "digest": _rows_digest(rows), "samples": rows}
        try:
            atomic_write(self.path, json.dumps(document).encode())
        except OSError as e:  # a read-only cache costs a rescan next time, nothing else
            logger.info("could not cache the index of %s: %s", self.record["path"], e)


# ---------------------------------------------------------------------- the shard set
class ShardSet:
    """An opened shard folder: its manifest, shards per shift, and random access to samples.

    Args:
        root: a folder or fsspec URL holding ``manifest.json`` (``file:///ABS`` and
            ``file://localhost/ABS`` are local paths).
        verify: serve only bytes checked against the manifest (default). Each shard is read and
            its sha256 compared once per process, the first time it is indexed or read (and again
            if the file's size or mtime changes); sequential reads hash as they go and fail the
            shard at its end. ``False`` skips the hash, for data checked already
            (``dsi-bench verify``); names, labels and tar headers are checked either way.

    Raises:
        ShardError: missing folder or manifest, a manifest of an unknown format, a URL that is
            not a local ``file://`` path or a known fsspec scheme.
    """

    def __init__(self, root: str | os.PathLike, *, verify: bool = True):
        self.root = _Root(root)
        self.verify = bool(verify)
        self.manifest = _read_manifest(self.root)
        self.plan = self.manifest.get("plan", {})
        self.records = list(self.manifest.get("shards", []))
        self._by_path = {r["path"]: r for r in self.records}

    def __repr__(self) -> str:
        return f"ShardSet({self.root.url!r}, {len(self.records)} shards, shifts={self.shifts})"

    @property
    def shifts(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.records:
            seen.setdefault(r["shift"], None)
        return list(seen)

    @property
    def class_list(self):
        """The label space the plan records (builds with a token bank learned on another dataset than
        ImageNet record its classes); ``None`` otherwise (ImageNet-1k).

        Raises:
            ShardError: the recorded class list is damaged.
        """
        from .classes import ClassList
        from .errors import ClassSpecError

        data = self.plan.get("class_list")
        if data is None:
            return None
        try:
            return ClassList.from_dict(data)
        except ClassSpecError as e:
            raise ShardError(f"{self.root.join(MANIFEST)!r} records a damaged class list ({e})") from e

    @functools.cached_property
    def num_classes(self) -> int:
        """Size of the label space labels must fall in (the recorded class list's, else ImageNet-1k's 1000)."""
        classes = self.class_list
        return 1000 if classes is None else len(classes)

    @property
    def fingerprint(self) -> str:
        """sha256 of the manifest: identifies the data a result was computed on."""
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()

    def shards(self, shift_id: str) -> list[dict]:
        """Manifest records of one shift's shards, in order.

        Raises:
            ShardError: the shift is not in this folder (the message lists what is).
        """
        out = [r for r in self.records if r["shift"] == shift_id]
        if not out:
            from .errors import close_matches

            raise ShardError(
                f"shift {shift_id!r} is not in {self.root.url!r} (it holds: {', '.join(self.shifts) or 'nothing'})."
                + close_matches(shift_id, self.shifts)
            )
        return out

    def entries(self, shift_id: str) -> list[SampleEntry]:
        """Every sample of a shift, in shard order (indexes built or loaded as needed)."""
        out: list[SampleEntry] = []
        for record in self.shards(shift_id):
            out.extend(self.index(record))
        return out

    # ------------------------------------------------------------------ checks
    def _verified(self, record: dict, stamp: str | None) -> bool:
        """Whether this process hashed this shard and found it the manifest's (``stamp=None``: any stamp)."""
        known = _VERIFIED.get((self.root.url, record["path"]))
        return known is not None and known[0] == record["sha256"] and stamp in (None, known[1])

    def _mark_verified(self, record: dict, stamp: str) -> None:
        _VERIFIED[(self.root.url, record["path"])] = (record["sha256"], stamp)

    def index(self, record: dict) -> list[SampleEntry]:
        """One shard's samples, checked against its manifest record (size, count, first and last key;
        with ``verify``, its sha256), every label against its key and the label space.

        Raises:
            ShardError: the shard is missing, truncated, damaged, not the shard the manifest lists,
                or holds a sample the readers refuse (names the shard and the sample).
        """
        self._check_size(record)
        rel = record["path"]
        stamp = self.root.stamp(rel)
        cache = _IndexCache(self.root, record, stamp)
        entries, scanned, matches = None, False, True
        if not self.verify or self._verified(record, stamp):
            entries = cache.memory() or cache.load()
        if entries is None:  # read the shard itself: with verify, hashed in the same pass
            with self.root.open(rel) as raw:
                f = _HashingReader(raw, record) if self.verify else raw
                entries = _scan_shard(f, rel, record["shift"])
                matches = not self.verify or f.matches()
            scanned = True
        if len(entries) != record["samples"]:
            raise ShardError(f"shard {rel} holds {len(entries)} samples but the manifest says "
                             f"{record['samples']}; run `dsi-bench verify` and rebuild it")
        ends = (entries[0].key, entries[-1].key) if entries else (None, None)
        if "first_key" in record and ends != (record["first_key"], record["last_key"]):
            raise ShardError(f"shard {rel} holds samples {ends[0]}..{ends[1]} but the manifest lists "
                             f"{record['first_key']}..{record['last_key']}: it was replaced by another shard; "
                             "run `dsi-bench verify` and rebuild it")
        if not matches:
            raise _damaged(rel)
        for e in entries:
            _check_label(rel, e.key, e.label, self.num_classes)
        if scanned:
            cache.store(entries)
        if self.verify:
            self._mark_verified(record, stamp)
        return entries

    def _check_size(self, record: dict) -> None:
        rel = record["path"]
        if not self.root.exists(rel):
            raise ShardError(f"shard {rel} listed in the manifest is missing from {self.root.url!r}; "
                             "rerun the build to restore it")
        size = self.root.size(rel)
        if size != record["bytes"]:
            raise ShardError(f"shard {rel} is {size} bytes but the manifest says {record['bytes']} (truncated, "
                             "damaged or from another build); run `dsi-bench verify` and rebuild it")

    def _check_served(self, rel: str) -> None:
        """Before a random read: the shard was verified in this process and (locally) has not changed since."""
        record = self._by_path.get(rel)
        if record is None:
            raise ShardError(f"shard {rel} is not listed in {self.root.join(MANIFEST)!r}; refusing to read it")
        if not self._verified(record, self.root.stamp(rel) if self.root.local is not None else None):
            self.index(record)  # hashes it (raises on a mismatch)

    @contextlib.contextmanager
    def open_checked(self, rel: str) -> Iterator[BinaryIO]:
        """A handle on a shard for reading front to back (by offsets, forward).

        With ``verify`` and a shard not verified in this process, the handle hashes what passes;
        leaving the block normally reads the rest and raises :class:`ShardError` if the shard is
        not the manifest's, so a stream fails at the end of a bad shard, before the next one.
        """
        record = self._by_path.get(rel)
        if record is None:
            raise ShardError(f"shard {rel} is not listed in {self.root.join(MANIFEST)!r}; refusing to read it")
        stamp = self.root.stamp(rel) if self.verify else ""
        with self.root.open(rel) as raw:
            if not self.verify or self._verified(record, stamp):
                yield raw
                return
            reader = _HashingReader(raw, record)
            yield reader
            if not reader.matches():
                raise _damaged(rel)
            self._mark_verified(record, stamp)

    # ------------------------------------------------------------------ reading
    def read_member(self, shard: str, offset: int, size: int, name: str | None = None, f=None) -> bytes:
        """Bytes of one member; with ``name``, its tar header is checked first (catches swapped shards).

        ``f``: an open handle on the shard to read from (sequential readers reuse one, from
        :meth:`open_checked`); without it, the shard is verified first (once per process).
        """
        start = offset - 512 if name is not None else offset
        if f is None:
            if self.verify:
                self._check_served(shard)
            with self.root.open(shard) as g:
                g.seek(start)
                blob = g.read(size + (offset - start))
        else:
            f.seek(start)
            blob = f.read(size + (offset - start))
        if name is not None:
            try:
                header = tarfile.TarInfo.frombuf(blob[:512], "utf-8", "surrogateescape")
            except tarfile.TarError:
                header = None
            if header is None or header.name != name or header.size != size:
                raise ShardError(f"shard {shard} does not match its index (expected {name!r} at byte {offset}); "
                                 "it was replaced or damaged: run `dsi-bench verify`")
            blob = blob[512:]
        if len(blob) != size:
            raise ShardError(f"shard {shard} ended early while reading a sample; it is truncated: rebuild it")
        return blob

    def load_image(self, entry: SampleEntry, draft: int | None = None, f=None) -> Image.Image:
        """The sample's image, its tar header checked first; ``f``: an open handle on its shard to read from."""
        data = self.read_member(entry.shard, entry.image_offset, entry.image_size, f"{entry.key}.{entry.image_ext}",
                                f=f)
        try:
            return decode_image(data, draft, ext=entry.image_ext)
        except Exception as e:  # noqa: BLE001 - PIL raises many types
            raise ShardError(f"shard {entry.shard}: image of {entry.key!r} does not decode ({decode_error(e)}); "
                             "rebuild it") from e

    def load_metadata(self, entry: SampleEntry) -> dict:
        if not entry.json_size:
            return {"key": entry.key, "class_index": entry.label}
        data = self.read_member(entry.shard, entry.json_offset, entry.json_size, f"{entry.key}.json")
        return _sample_fields(entry.shard, entry.key, True, str(entry.label).encode(), data)[1]

    def iter_shard(self, record: dict) -> Iterator[dict]:
        """Samples of one shard in order, as dicts of raw member bytes (``__key__``, ``jpg``, ``cls``, ...).

        Names, labels and metadata are checked as they are read; with ``verify``, the shard's
        sha256 is checked at its end, before its last sample is given.

        Raises:
            ShardError: naming the shard (and sample) that is missing, damaged or refused.
        """
        rel = record["path"]
        pending: dict | None = None
        try:
            with self.open_checked(rel) as f:
                for key, ext, m, tf in _members(f, rel, record["shift"]):
                    if pending is not None and pending["__key__"] != key:
                        yield self._checked_sample(rel, pending)
                        pending = None
                    if pending is None:
                        pending = {"__key__": key, "__url__": rel}
                    pending[ext] = _read_data(tf, m)
        except FileNotFoundError as cause:
            raise ShardError(f"shard {rel} is missing from {self.root.url!r}; rerun the build to restore it") from cause
        except ShardError:
            raise
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            raise ShardError(f"shard {rel} is damaged ({e}); run `dsi-bench verify` and rebuild it") from e
        if pending is not None:
            yield self._checked_sample(rel, pending)

    def _checked_sample(self, rel: str, sample: dict) -> dict:
        key = sample["__key__"]
        label, _ = _sample_fields(rel, key, _image_member(sample) is not None, sample.get("cls"), sample.get("json"))
        _check_label(rel, key, label, self.num_classes)
        return sample


# ---------------------------------------------------------------------- verification
def _image_member(sample: dict) -> tuple[str, bytes] | None:
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return ext, sample[ext]
    return None


@dataclass
class VerifyReport:
    """Result of :func:`verify_shards`: ``problems`` maps shard path -> what is wrong."""

    root: str
    checked: int
    samples: int
    problems: dict[str, str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        if self.ok:
            return f"{self.root}: all {self.checked} shards ({self.samples} samples) match the manifest"
        lines = [f"{self.root}: {len(self.problems)} of {self.checked} shards are bad:"]
        lines += [f"  {path}: {why}" for path, why in sorted(self.problems.items())]
        return "\n".join(lines)


def _verify_one(shards: ShardSet, record: dict, decode: bool) -> tuple[str | None, int]:
    rel = record["path"]
    if not shards.root.exists(rel):
        return "missing", 0
    size = shards.root.size(rel)
    if size != record["bytes"]:
        return f"{size} bytes, manifest says {record['bytes']} (truncated or replaced)", 0
    stamp = shards.root.stamp(rel)
    with shards.root.open(rel) as f:
        if not _HashingReader(f, record).matches():
            return "sha256 differs from the manifest (damaged, or a shard from another build)", 0
    shards._mark_verified(record, stamp)  # the pass below checks names, labels and images, not the hash again
    n, ends = 0, [None, None]
    try:
        for sample in shards.iter_shard(record):
            n += 1
            ends = [ends[0] or sample["__key__"], sample["__key__"]]
            member = _image_member(sample)
            if member is None or "cls" not in sample:
                return f"sample {sample['__key__']!r} lacks an image or a label", n
            if decode:
                try:
                    decode_image(member[1], ext=member[0])
                except Exception as e:  # noqa: BLE001
                    return f"image of {sample['__key__']!r} does not decode ({decode_error(e)})", n
    except ShardError as e:
        return str(e), n
    if n != record["samples"]:
        return f"{n} samples, manifest says {record['samples']}", n
    if "first_key" in record and tuple(ends) != (record["first_key"], record["last_key"]):
        return (f"holds samples {ends[0]}..{ends[1]} but the manifest lists {record['first_key']}.."
                f"{record['last_key']} (the manifest was edited, or the shard belongs elsewhere)"), n
    return None, n


def verify_shards(
    root: str | os.PathLike,
    *,
    decode: bool = True,
    shifts: Iterable[str] | None = None,
    progress: bool = False,
) -> VerifyReport:
    """Check every shard against the manifest: present, size, sha256, sample count, member names,
    labels (against their keys and the label space), metadata, images decode.

    Raises:
        ShardError: the folder or its manifest is missing or unreadable, lists no shards, or
            ``shifts`` names a shift it does not hold (nothing would be checked).
    """
    from tqdm.auto import tqdm

    shards = ShardSet(root)
    if not shards.records:
        raise ShardError(f"{shards.root.join(MANIFEST)!r} lists no shards: there is nothing to verify (the folder "
                         "holds no data); rebuild it with `dsi-bench build` or `convert`")
    wanted = None if shifts is None else list(dict.fromkeys(shifts))
    if wanted == []:
        raise ShardError(f"no shifts given to verify in {shards.root.url!r} (it holds: {', '.join(shards.shifts)})")
    for shift_id in wanted or []:
        shards.shards(shift_id)  # an unknown shift is an error naming what the folder holds, not "0 shards match"
    records = [r for r in shards.records if wanted is None or r["shift"] in wanted]
    problems: dict[str, str] = {}
    samples = 0
    for record in tqdm(records, desc="verify", unit="shard", disable=not progress, dynamic_ncols=True):
        why, n = _verify_one(shards, record, decode)
        samples += n
        if why:
            problems[record["path"]] = why
    return VerifyReport(shards.root.url, len(records), samples, problems)
