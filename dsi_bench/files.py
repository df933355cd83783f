"""Small file-system helpers: atomic writes, writability checks, hashes, JSON reading, the cache location."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CacheError, ShardError

__all__ = ["atomic_write", "canonical_json", "check_writable", "contained_path", "default_cache_dir",
           "ensure_writable_dir", "keep_elsewhere", "writing_into", "read_json", "sha256_file", "write_or_keep"]


def default_cache_dir() -> Path:
    """Where the package caches on disk (samples, shard indexes, fetched masks).

    ``$DSI_BENCH_CACHE``, else ``$XDG_CACHE_HOME/dsi-bench/samples``, else ``~/.cache/dsi-bench/samples``.
    """
    if os.environ.get("DSI_BENCH_CACHE"):
        return Path(os.environ["DSI_BENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dsi-bench" / "samples"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a part.

    The bytes go to a temporary file in the same folder, are flushed to disk, and the file is
    renamed over ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def ensure_writable_dir(path: str | os.PathLike, what: str = "folder") -> Path:
    """Create ``path`` if needed and check that files can be written in it.

    Raises:
        CacheError: naming the folder and what to do.
    """
    path = Path(path).expanduser()
    _refuse_other_kind(path, what, folder=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
        _probe(path)
    except OSError as e:
        raise CacheError(
            f"{what} {str(path)!r} is not writable ({e.strerror or e}); choose another location or fix its permissions"
        ) from e
    return path


def _probe(folder: Path) -> None:
    """Create and remove a file in ``folder`` (the only reliable test of writability, root included)."""
    fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
    os.close(fd)
    os.unlink(probe)


def _refuse_other_kind(path: Path, what: str, *, folder: bool) -> None:
    """Refuse a file where an output folder is expected, or a folder where an output file is."""
    kind = "folder" if folder else "file"
    if path.exists() and path.is_dir() != folder:
        raise CacheError(f"{what} {str(path)!r} is a {'file' if folder else 'folder'}, not a {kind}; "
                         f"pass the path of a {kind} to write")


def check_writable(path: str | os.PathLike, what: str, *, folder: bool = False) -> Path:
    """Refuse, before any work, an output that cannot be written; creates nothing.

    ``path`` is an output file (or, with ``folder``, an output folder): refused when it is a folder
    (a file), or when the nearest folder that exists on the way to it is not a folder or cannot be
    written in.

    Raises:
        CacheError: naming the path, what is wrong and what to do.
    """
    path = Path(path).expanduser()
    _refuse_other_kind(path, what, folder=folder)
    base = path if path.is_dir() else path.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    try:
        if not base.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{str(base)!r} is a file")
        _probe(base)
    except OSError as e:
        raise CacheError(f"{what} {str(path)!r} is not writable ({e.strerror or e} in {str(base)!r}); choose "
                         "another location or fix its permissions") from e
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical_json(obj) -> bytes:
    """Compact JSON with sorted keys: equal objects give equal bytes (for hashes and shards)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def read_json(path: str | os.PathLike, what: str, error: type[Exception] = CacheError) -> object:
    """Parse a JSON file; a missing or malformed file raises ``error`` naming ``what`` and the path."""
    path = Path(path).expanduser()
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as cause:
        raise error(f"{what} {str(path)!r} does not exist") from cause
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{what} {str(path)!r} is not valid JSON ({e})") from e


def contained_path(root: str | os.PathLike, rel: str, what: str) -> Path:
    """``root/rel``, refusing a ``rel`` read from a file (manifest, zip, tar) that would leave ``root``.

    Absolute paths, ``..`` parts and paths that resolve (through links) outside ``root`` are refused.

    Raises:
        ShardError: naming the path and where it came from (``what``).
    """
    text = str(rel)
    parts = text.replace("\\", "/").split("/")
    if not text or os.path.isabs(text) or text.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise ShardError(f"{what}: path {text!r} is not a relative path inside {str(root)!r}; refusing to read or "
                         "write it (the file was edited or made elsewhere: rebuild it)")
    base = Path(root).resolve()
    path = (base / text).resolve()
    if path != base and base not in path.parents:
        raise ShardError(f"{what}: path {text!r} leads outside {str(root)!r} (to {str(path)!r}); refusing to read or "
                         "write it (links out of the folder are not followed: put the file itself in the folder)")
    return Path(root) / text


def write_or_keep(path: str | os.PathLike, write: Callable[[Path], object], what: str) -> Path:
    """``write(path)``; when that fails (disk full, a folder made read-only), keep the output elsewhere
    (:func:`keep_elsewhere`) and raise an error naming both paths, so nothing computed is lost.

    Raises:
        CacheError: naming ``path``, the cause, and where the output was kept (or that it could not be).
    """
    path = Path(path).expanduser()
    try:
        write(path)
        return path
    except OSError as e:
        failed = f"could not write {what} to {str(path)!r} ({e.strerror or e})"
        kept = keep_elsewhere(write, path.name)
        if kept is None:
            raise CacheError(f"{failed}, nor to the temporary or cache folder; free some space and rerun") from e
        raise CacheError(f"{failed}; kept in {str(kept)!r}: copy it from there once that is fixed") from e


def keep_elsewhere(write: Callable[[Path], object], name: str) -> Path | None:
    """Have ``write`` write an output that could not go where asked to a new file named like ``name`` in
    the temporary folder (else in the cache folder); return that file, or ``None`` when neither took it."""
    name = Path(name)
    for folder in (Path(tempfile.gettempdir()) / "dsi-bench-kept", default_cache_dir().parent / "kept"):
        kept = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, kept = tempfile.mkstemp(prefix=f"{name.stem}.", suffix=name.suffix, dir=folder)
            os.close(fd)
            write(Path(kept))
            return Path(kept)
        except OSError:
            if kept is not None:
                Path(kept).unlink(missing_ok=True)
    return None


#: ``errno`` values of a write refused for lack of room or a file system that turned read-only.
_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


@contextmanager
def writing_into(folder: str | os.PathLike, what: str, kept: str) -> Iterator[None]:
    """Turn a write into ``folder`` that fails for lack of room (or a read-only file system) into one
    line naming the folder, the file and what was kept (``kept``), instead of a traceback.

    Raises:
        CacheError: for those failures; other errors pass through.
    """
    try:
        yield
    except OSError as e:
        if e.errno not in _FULL_OR_READ_ONLY:
            raise
        file = f" {str(e.filename)!r}" if e.filename else ""
        raise CacheError(f"could not write{file} ({e.strerror}) while writing {what} {str(folder)!r}; {kept}") from e

