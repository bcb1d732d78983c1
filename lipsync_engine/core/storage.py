"""Atomic file writes: nothing the engine writes is ever seen half-written.

Every output goes to a temporary name in the destination folder and is renamed over the
final name (os.replace, atomic on one filesystem) only once complete.
Must not: know what the files mean.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import EngineError


def temp_path_for(path: Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        yield tmp
        os.replace(tmp, path)
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
    if int(doc.get("format_version", 0)) > version:
        raise error(f"{path}: format version {doc['format_version']} is newer than this engine reads "
                    f"({version}); update the engine")
    return doc


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporaries left by a killed run (names start with '.' and hold '.tmp-')."""
    for p in Path(folder).glob(".*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
