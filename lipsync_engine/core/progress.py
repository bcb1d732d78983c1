"""Progress reports and cancellation shared by every long stage.

A stage receives an `on_progress(Progress)` callback and a `CancelToken`; it never prints.
Only cli.py (a progress bar) and protocol users (the Blender add-on) turn these into output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import Cancelled


@dataclass(frozen=True)
class Progress:
    stage: str          # "track", "atlas", "assemble", "report", ...
    done: int           # units finished in this stage
    total: int          # units in this stage (frames, takes, ...)
    message: str = ""   # e.g. the take being processed


ProgressCallback = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    """The default callback: report nothing."""


class CancelToken:
    """Cancellation flag: set by the caller (SIGINT handler, Blender's Esc) or a cancel file.

    `event` may be a multiprocessing Event so that worker processes see it too.
    """

    def __init__(self, event=None, cancel_file: Path | None = None):
        self._event = event
        self._flag = False
        self.cancel_file = Path(cancel_file) if cancel_file else None

    def set(self) -> None:
        self._flag = True
        if self._event is not None:
            self._event.set()

    @property
    def is_set(self) -> bool:
        if self._flag or (self._event is not None and self._event.is_set()):
            return True
        if self.cancel_file is not None and self.cancel_file.exists():
            self.set()
            return True
        return False

    def check(self) -> None:
        """Raise Cancelled if cancellation was asked for."""
        if self.is_set:
            raise Cancelled("cancelled; finished work is kept and a re-run resumes from it")
