"""The engine's machine-readable output: one JSON array per line on stdout (`--json`).

Message types (version 1): STATUS, PROGRESS, WARN, ERROR, RESULT, DONE; DONE is always
last. `lipsync live` adds FRAME, one per streamed frame (docs/live.md). Example: ["PROGRESS", {"stage": "atlas", "done": 120, "total": 1530}]. The Blender
add-on reads these; big data travels as file paths in RESULT. Only cli.py calls emit().
"""

from __future__ import annotations

import json
import sys

PROTOCOL_VERSION = 1
MESSAGE_TYPES = ("STATUS", "PROGRESS", "WARN", "ERROR", "RESULT", "DONE", "FRAME")  # FRAME: `lipsync live`


def emit(kind: str, payload: dict, stream=None) -> None:
    if kind not in MESSAGE_TYPES:
        raise ValueError(f"unknown message type {kind!r}; expected one of {MESSAGE_TYPES}")
    out = stream or sys.stdout
    out.write(json.dumps([kind, payload], separators=(",", ":")) + "\n")
    out.flush()
