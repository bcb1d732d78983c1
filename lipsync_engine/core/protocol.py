"""The engine's machine-readable output: one JSON array per line on stdout (`--json`).

Message types (version 1): STATUS, PROGRESS, WARN, ERROR, RESULT, DONE; DONE is always
last. Example: ["PROGRESS", {"stage": "atlas", "done": 120, "total": 1530}]. The Blender
add-on reads these; big data travels as file paths in RESULT. Only cli.py calls emit().
"""

from __future__ import annotations

import sys

# the kinds, version, exit codes and line format are shared with the Blender add-on
from .interop import (EXIT_CANCELLED, EXIT_CRASH, EXIT_ENVIRONMENT, EXIT_ERROR, EXIT_OK, EXIT_USAGE,  # noqa: F401
                      MESSAGE_TYPES, PROTOCOL_VERSION, encode_message)


def emit(kind: str, payload: dict, stream=None) -> None:
    """Write one message line to stdout (or `stream`); ValueError for an unknown kind."""
    out = stream or sys.stdout
    out.write(encode_message(kind, payload) + "\n")
    out.flush()
