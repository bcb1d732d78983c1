"""Errors a user can read. Every message names the file (or thing) and what is wrong.

The CLI turns an EngineError into a one-line message and exit code 1 (4 for an
EnvironmentProblem; docs/errors.md); anything else is a crash (exit code 3) with the
traceback on stderr.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of all errors whose message is meant for the user."""


class InputError(EngineError):
    """An input file is missing, unreadable or not what it should be."""


class NoFaceError(InputError):
    """No usable face was found in a video (or in too many of its frames)."""


class DatasetError(EngineError):
    """A speaker directory is incomplete, from a newer format version, or inconsistent."""


class OutputExists(EngineError):
    """An output is already there and the caller did not ask to replace or continue it. The
    message says what is there; the CLI adds which of its flags would go on (cli.py)."""


class EnvironmentProblem(EngineError):
    """The machine, not the input: a full disk, a read-only or forbidden folder, a compute device
    that is not there. The CLI exits with code 4 (interop.EXIT_ENVIRONMENT)."""

    exit_code = 4


class Cancelled(EngineError):
    """The user asked the work to stop (Ctrl-C, a cancel file, Esc in Blender)."""


class UsageError(EngineError):
    """A request of `lipsync serve` whose command line argparse refuses, or that is not a request
    at all; answered with ERROR and DONE (exit code 2, as the CLI's bad usage), the server goes on."""

    exit_code = 2


class NoAudioDevice(EngineError):
    """No microphone, or PortAudio missing (`lipsync live --input mic`): bad usage on this
    machine (exit code 2)."""

    exit_code = 2
