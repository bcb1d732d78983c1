"""The add-on's parts without bpy (tested in plain Python): the engine client and its
environment, reading the engine's outputs, and driving a character's shape keys from ARKit
coefficients. interop.py is the engine's lipsync_engine/core/interop.py (a symlink in git,
a copy in the built zip): ARKit names and matching, the message protocol, PC2/OBJ readers.
Must not: import bpy, numpy or any engine module."""
