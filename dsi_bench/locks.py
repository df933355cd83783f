"""Exclusive locks on output folders and files, so two runs never write the same output at once.

A lock is a file (``FOLDER/.dsi-bench.lock``, or ``.NAME.lock`` beside a file) that this run creates,
holds with ``fcntl.flock`` and removes when it is done, also on an error or Ctrl-C. It records who holds
it (pid, host, command, since when), so a second run is refused with a message naming the holder. The
operating system drops the ``flock`` of a process that dies, so a lock file left by a killed run is
found free and taken over, with a warning naming the run that left it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LockError
from .files import ensure_writable_dir

__all__ = ["FOLDER_LOCK", "file_lock", "folder_lock"]

logger = logging.getLogger(__name__)

#: The lock file's name inside a locked folder.
FOLDER_LOCK = ".dsi-bench.lock"


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "output folder") -> Iterator[Path]:
    """Hold ``folder`` (which must exist) for this run; another run on it is refused at once.

    Raises:
        LockError: another live process holds the folder (naming it: pid@host, since when, its command).
    """
    with _hold(Path(folder) / FOLDER_LOCK, Path(folder), what):
        yield Path(folder)


@contextmanager
def file_lock(path: str | os.PathLike, what: str = "output file") -> Iterator[Path]:
    """Hold the output file ``path`` (its lock is ``.NAME.lock`` beside it); as :func:`folder_lock`."""
    path = Path(path)
    ensure_writable_dir(path.parent, f"folder of the {what}")
    with _hold(path.with_name(f".{path.name}.lock"), path, what):
        yield path


@contextmanager
def _hold(lock: Path, subject: Path, what: str) -> Iterator[None]:
    fd = _acquire(lock, subject, what)
    try:
        yield
    finally:
        try:
            lock.unlink()  # before closing: a run that opens it meanwhile finds it replaced and retries
        except OSError:
            pass
        os.close(fd)


def _acquire(lock: Path, subject: Path, what: str) -> int:
    """Open, ``flock`` and fill in the lock file; return its descriptor."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _try_flock(fd)
            old = _read(fd)
            if locked is False or (locked is None and old and _alive(old)):
                raise LockError(f"{what} {str(subject)!r} is in use by another dsi-bench run ({_describe(old)}); "
                                f"wait for it to finish or choose another output (if that run is gone, remove "
                                f"{str(lock)!r})")
            if not _same_file(fd, lock):
                os.close(fd)  # its holder removed it between our open and our lock: start again
                continue
            if old:
                logger.warning("%s %r: taking over the lock left by a run that is gone (%s)", what, str(subject),
                               _describe(old))
            _write(fd)
            return fd
        except BaseException:
            os.close(fd)
            raise


def _try_flock(fd: int) -> bool | None:
    """``True``: locked; ``False``: another process holds it; ``None``: no flock here (then the pid decides)."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None


def _alive(holder: dict) -> bool:
    """Whether the process a lock file names still runs (another host's: assumed so)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def _same_file(fd: int, lock: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(lock))
    except OSError:
        return False


def _read(fd: int) -> dict | None:
    try:
        holder = json.loads(os.pread(fd, 1 << 16, 0) or b"null")
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _write(fd: int) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(sys.argv)[:500],
              "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode() + b"\n", 0)


def _describe(holder: dict | None) -> str:
    if not holder:
        return "a run that has not said who it is yet"
    return f"pid {holder.get('pid')}@{holder.get('host')} since {holder.get('since')}: {holder.get('command')}"
