"""core/heap.py: after keep_freed_memory, a training-sized tensor comes from the heap, not from
a fresh mmap (whose pages every training step would fault in again)."""

import json
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, json, sys
import torch
from lipsync_engine.core.heap import keep_freed_memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2

def mapped_while_held():
    before = libc.mallinfo2().hblks
    t = torch.empty(32 * 8 * 128 * 128)          # 16 MiB: the texture decoder's last activation at batch 32
    t.fill_(1.0)
    during = libc.mallinfo2().hblks
    del t
    return during - before

out = {"default": mapped_while_held()}
out["kept"] = keep_freed_memory()
out["again"] = keep_freed_memory()
out["after"] = mapped_while_held()
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings: Linux only")
def test_keep_freed_memory_serves_training_tensors_from_the_heap():
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["default"] == 1          # glibc's default: a block this large is its own mmap
    assert out["kept"] is True and out["again"] is True
    assert out["after"] == 0            # now from the heap, kept for the next step
