"""Small file-system helpers: atomic writes, writability checks, hashes, JSON reading, the cache location."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from .errors import CacheError, ShardError

__all__ = ["atomic_write", "canonical_json", "contained_path", "default_cache_dir", "ensure_writable_dir", "read_json",
           "sha256_file"]


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
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CacheError(
            f"{what} {str(path)!r} is not writable ({e.strerror or e}); choose another location or fix its permissions"
        ) from e
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
                         "write it")
    return Path(root) / text
