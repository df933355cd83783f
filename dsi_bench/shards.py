"""Shard folders on disk: the manifest, a cached tar-offset index, checked random reads, verification.

Layout of a shard folder (written by :mod:`dsi_bench.build`)::

    DIR/manifest.json                         plan + one record per shard (sha256, bytes, samples)
    DIR/{shift_id}/{shift_id}-{k:06d}.tar     WebDataset shards

Each sample in a shard is ``{key}.{jpg|png}`` (the image), ``{key}.cls`` (the label, decimal)
and ``{key}.json`` (the sample's full metadata), with ``key = {shift}/{class:04d}/{index:02d}``.

Reading. :class:`ShardSet` opens a folder or any fsspec URL (``file://``, ``s3://``,
``hf://datasets/USER/NAME``). Random access uses a per-shard index of tar offsets (built once
by reading tar headers and the small ``.cls``/``.json`` members, then cached on disk under
the shard's sha256), checked against the manifest (sample count, first and last key). The
dataset plugin over it is :mod:`dsi_bench.sources.shards`; the names on disk are in
:mod:`dsi_bench.layout`.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ShardError
from .images import IMAGE_EXTENSIONS, decode_error, decode_image
from .layout import MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION, split_member
from .memo import Memo

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

_INDEX_VERSION = 1


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


# ---------------------------------------------------------------------- file access
class _Root:
    """A local folder or an fsspec URL, with ``open``/``size``/``exists`` on relative paths."""

    def __init__(self, root: str | os.PathLike):
        text = os.fspath(root)
        self.url = text
        if "://" in text and not text.startswith("file://"):
            import fsspec

            if text.startswith("hf://"):
                from .online import check_hub

                check_hub(f"shard folder {text!r}", "download it where you are online (hf download --repo-type dataset "
                          "USER/NAME --local-dir DIR) and pass that folder instead of the URL")
            self.fs, self.path = fsspec.core.url_to_fs(text)
            self.local = None
        else:
            self.fs = None
            self.local = Path(text[len("file://"):] if text.startswith("file://") else text).expanduser()
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
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ShardError(f"{root.join(MANIFEST)!r} is not a dsi-bench shard manifest (format "
                         f"{manifest.get('format')!r}, expected {MANIFEST_FORMAT!r})")
    if int(manifest.get("version", 0)) > MANIFEST_VERSION:
        raise ShardError(f"{root.join(MANIFEST)!r} has manifest version {manifest['version']}; this dsi-bench "
                         f"reads up to {MANIFEST_VERSION}: upgrade dsi-bench")
    from .files import contained_path

    for record in manifest.get("shards", []):  # every shard path stays inside the folder, or nothing is read
        contained_path(root.local if root.local is not None else Path("/url-root"), str(record.get("path", "")),
                       f"shard record in {root.join(MANIFEST)!r}")
    return manifest


# ---------------------------------------------------------------------- indexing
def _index_dir() -> Path:
    from .files import default_cache_dir

    return default_cache_dir() / "shard-index"


def _scan_shard(f, shard: str) -> list[SampleEntry]:
    """Index a shard by reading its tar headers and small members (images are skipped)."""
    members: dict[str, dict] = {}
    order: list[str] = []
    try:
        with tarfile.open(fileobj=f, mode="r:") as tf:
            for m in tf:
                if not m.isreg():
                    continue
                key, ext = split_member(m.name)
                if key not in members:
                    members[key] = {}
                    order.append(key)
                if ext in ("cls", "json"):
                    members[key][ext] = (m.offset_data, m.size, tf.extractfile(m).read())
                elif ext in IMAGE_EXTENSIONS:
                    members[key]["image"] = (ext, m.offset_data, m.size)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ShardError(f"shard {shard} is damaged ({e}); run `dsi-bench verify` and rebuild it") from e
    entries = []
    for key in order:
        parts = members[key]
        if "image" not in parts or "cls" not in parts:
            raise ShardError(f"shard {shard}: sample {key!r} lacks an image or a .cls label; rebuild the shard")
        try:
            label = int(parts["cls"][2].decode().strip())
            meta = json.loads(parts["json"][2]) if "json" in parts else {}
        except (ValueError, UnicodeDecodeError) as e:
            raise ShardError(f"shard {shard}: sample {key!r} has an unreadable label or metadata ({e})") from e
        ext, off, size = parts["image"]
        joff, jsize = parts["json"][:2] if "json" in parts else (0, 0)
        keep = None if meta.get("keep") is None else bool(meta["keep"])
        entries.append(SampleEntry(key, label, keep, shard, ext, off, size, joff, jsize))
    return entries


#: Indexes of shards read in this process (a full ImageNet* set is 1,200 shards).
_MEMO = Memo("shard indexes", 4096)


def _cached_index(root: _Root, record: dict) -> list[SampleEntry]:
    """A shard's index: from memory, else the on-disk cache, else a scan.

    Cached under the manifest's sha256 *and* the file's size (and, for local files, mtime), so
    an index scanned from a damaged copy is never reused for the rebuilt shard.
    """
    import hashlib

    digest = record["sha256"]
    stamp = hashlib.sha256(root.stamp(record["path"]).encode()).hexdigest()[:16]
    memo_key = f"{root.url}|{record['path']}|{digest}|{stamp}"
    cached = _MEMO.get(memo_key)
    if cached is not None:
        return cached
    path = _index_dir() / digest[:2] / f"{digest}-{stamp}.json"
    entries = None
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("version") == _INDEX_VERSION:
                entries = [SampleEntry(row[0], row[1], row[2], record["path"], *row[3:]) for row in data["samples"]]
        except (OSError, ValueError, TypeError):
            entries = None
    if entries is None:
        with root.open(record["path"]) as f:
            entries = _scan_shard(f, record["path"])
        rows = [[e.key, e.label, e.keep, e.image_ext, e.image_offset, e.image_size, e.json_offset, e.json_size]
                for e in entries]
        try:
            from .files import atomic_write

            atomic_write(path, json.dumps({"version": _INDEX_VERSION, "samples": rows}).encode())
        except OSError as e:  # a read-only cache costs a rescan next time, nothing else
            logger.info("could not cache the index of %s: %s", record["path"], e)
    _MEMO.put(memo_key, entries)
    return entries


# ---------------------------------------------------------------------- the shard set
class ShardSet:
    """An opened shard folder: its manifest, shards per shift, and random access to samples.

    Args:
        root: a folder or fsspec URL holding ``manifest.json``.

    Raises:
        ShardError: missing folder or manifest, or a manifest of an unknown format.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = _Root(root)
        self.manifest = _read_manifest(self.root)
        self.plan = self.manifest.get("plan", {})
        self.records = list(self.manifest.get("shards", []))

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

    @property
    def fingerprint(self) -> str:
        """sha256 of the manifest: identifies the data a result was computed on."""
        import hashlib

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

    def index(self, record: dict) -> list[SampleEntry]:
        """One shard's samples, checked against its manifest record (size, count, first and last key).

        Raises:
            ShardError: the shard is missing, truncated, or not the shard the manifest lists.
        """
        self._check_size(record)
        entries = _cached_index(self.root, record)
        rel = record["path"]
        if len(entries) != record["samples"]:
            raise ShardError(f"shard {rel} holds {len(entries)} samples but the manifest says "
                             f"{record['samples']}; run `dsi-bench verify` and rebuild it")
        ends = (entries[0].key, entries[-1].key) if entries else (None, None)
        if "first_key" in record and ends != (record["first_key"], record["last_key"]):
            raise ShardError(f"shard {rel} holds samples {ends[0]}..{ends[1]} but the manifest lists "
                             f"{record['first_key']}..{record['last_key']}: it was replaced by another shard; "
                             "run `dsi-bench verify` and rebuild it")
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

    def read_member(self, shard: str, offset: int, size: int, name: str | None = None, f=None) -> bytes:
        """Bytes of one member; with ``name``, its tar header is checked first (catches swapped shards).

        ``f``: an open handle on the shard to read from (sequential readers reuse one).
        """
        start = offset - 512 if name is not None else offset
        if f is None:
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
            return decode_image(data, draft)
        except Exception as e:  # noqa: BLE001 - PIL raises many types
            raise ShardError(f"shard {entry.shard}: image of {entry.key!r} does not decode ({decode_error(e)}); "
                             "rebuild it") from e

    def load_metadata(self, entry: SampleEntry) -> dict:
        if not entry.json_size:
            return {"key": entry.key, "class_index": entry.label}
        return json.loads(self.read_member(entry.shard, entry.json_offset, entry.json_size, f"{entry.key}.json"))

    def iter_shard(self, record: dict) -> Iterator[dict]:
        """Samples of one shard in order, as dicts of raw member bytes (``__key__``, ``jpg``, ``cls``, ...)."""
        from webdataset.tariterators import group_by_keys, tar_file_expander

        rel = record["path"]
        try:
            with self.root.open(rel) as f:
                yield from group_by_keys(tar_file_expander([{"url": rel, "stream": f}]))
        except FileNotFoundError as cause:
            raise ShardError(f"shard {rel} is missing from {self.root.url!r}; rerun the build to restore it") from cause
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            raise ShardError(f"shard {rel} is damaged ({e}); run `dsi-bench verify` and rebuild it") from e


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
    import hashlib

    rel = record["path"]
    if not shards.root.exists(rel):
        return "missing", 0
    size = shards.root.size(rel)
    if size != record["bytes"]:
        return f"{size} bytes, manifest says {record['bytes']} (truncated or replaced)", 0
    h = hashlib.sha256()
    with shards.root.open(rel) as f:
        while block := f.read(1 << 20):
            h.update(block)
    if h.hexdigest() != record["sha256"]:
        return "sha256 differs from the manifest (damaged, or a shard from another build)", 0
    n = 0
    try:
        for sample in shards.iter_shard(record):
            n += 1
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
    return None, n


def verify_shards(
    root: str | os.PathLike,
    *,
    decode: bool = True,
    shifts: Iterable[str] | None = None,
    progress: bool = False,
) -> VerifyReport:
    """Check every shard against the manifest: present, size, sha256, sample count, images decode.

    Raises:
        ShardError: the folder or its manifest is missing or unreadable (nothing to verify against).
    """
    from tqdm.auto import tqdm

    shards = ShardSet(root)
    wanted = None if shifts is None else set(shifts)
    records = [r for r in shards.records if wanted is None or r["shift"] in wanted]
    problems: dict[str, str] = {}
    samples = 0
    for record in tqdm(records, desc="verify", unit="shard", disable=not progress, dynamic_ncols=True):
        why, n = _verify_one(shards, record, decode)
        samples += n
        if why:
            problems[record["path"]] = why
    return VerifyReport(shards.root.url, len(records), samples, problems)
