"""Atomic file writes: nothing the engine writes is ever seen half-written.

Every output goes to a temporary name in the destination folder and is renamed over the
final name (os.replace, atomic on one filesystem) only once complete.
Must not: know what the files mean.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import EngineError, EnvironmentProblem


def temp_path_for(path: Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        try:
            yield tmp
            os.replace(tmp, path)
        except OSError as e:    # a full disk or read-only folder: name the output, not the temporary
            if e.errno is not None and e.filename in (None, str(tmp), tmp):
                raise OSError(e.errno, e.strerror or str(e), str(path)) from e
            raise
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array))


def save_npz(path: Path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def read_versioned_json(path: Path, fmt: str, version: int, what: str, error=None) -> dict:
    """Read a JSON file that names its format and version; refuse others with a clear line.

    what : the thing for messages ("LipSync3D model"); error : the exception class to raise.
    """
    error = error or EngineError
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise error(f"{path.parent}: not a {what} directory (no {path.name})") from e
    except (OSError, ValueError) as e:
        raise error(f"{path}: unreadable ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise error(f"{path}: not a {what} (format {doc.get('format') if isinstance(doc, dict) else None!r})")
    found = doc.get("format_version", 0)
    if not isinstance(found, int) or isinstance(found, bool):
        raise error(f"{path}: format_version must be a whole number, found {found!r}")
    if found > version:
        raise error(f"{path}: format version {doc['format_version']} is newer than this engine reads "
                    f"({version}); update the engine")
    return doc


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporaries left by a killed run (names start with '.' and hold '.tmp-')."""
    for p in Path(folder).glob(".*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse to start writing `needed` bytes into `folder` (or its nearest existing parent)
    when the disk has less free: an EnvironmentProblem naming the folder and both sizes."""
    where = Path(folder)
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if needed > free:
        raise EnvironmentProblem(f"{folder}: {what} needs about {_megabytes(needed)} of free disk space, "
                                 f"{_megabytes(free)} left on that disk")


def _megabytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{max(n, 0) / 1e6:.0f} MB"


def open_memmap_allocated(path: Path, dtype, shape: tuple) -> np.memmap:
    """A new .npy memory map whose blocks are allocated on disk now.

    Writing into the pages of a sparse memory-mapped file on a full disk kills the writer with
    SIGBUS; allocating every block first turns a full disk into an OSError (ENOSPC) here."""
    path = Path(path)
    array = np.lib.format.open_memmap(path, "w+", np.dtype(dtype), tuple(shape))
    if hasattr(os, "posix_fallocate"):  # Linux; elsewhere the file stays sparse
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as e:
            del array
            raise OSError(e.errno, e.strerror, str(path)) from e
        finally:
            os.close(fd)
    return array


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clear_leftovers(path: Path) -> None:
    """What a killed run left beside the output `path`: its temporary (`.NAME.tmp-PID`) is
    deleted; a previous result it had moved aside (`.NAME.old-PID`) goes back to `path` if
    the run died before the new one took its place, else is deleted. Only leftovers of
    processes that are gone are touched (another run may be writing its own)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for kind in ("tmp", "old"):
        for p in path.parent.glob(f".{glob.escape(path.name)}.{kind}-*"):
            pid = p.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or _pid_alive(int(pid)):
                continue
            if kind == "old" and not path.exists():
                os.replace(p, path)
            elif p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def check_writable(path: Path) -> None:
    """Refuse, before any work, an output that cannot be written where it is asked for: its
    folder (or the nearest one that exists) does not let this process create a file there (a
    read-only disk, someone else's folder, /proc or /sys). An EnvironmentProblem naming the output.
    A part of the path that is a file is left to the command's own check (an InputError)."""
    path = Path(path)
    where = path if path.is_dir() else path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        return
    probe = where / f".lipsync-write-test-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as e:
        why = "no file can be created in it" if e.errno == errno.ENOENT else (e.strerror or str(e)).lower()
        raise EnvironmentProblem(f"{path}: cannot write there ({where}: {why})") from None
    os.close(fd)
    probe.unlink(missing_ok=True)
