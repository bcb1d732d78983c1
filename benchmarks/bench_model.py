"""Time one training step (forward + backward + Adam) of the LipSync3D network on this machine.

Usage: .venv/bin/python benchmarks/bench_model.py [--widths 1 0.25 0.125] [--batch 32] [--device cpu]
Prints parameters, wall time per step (median of 3 after a warm-up) and frames/s,
for choosing the CPU width preset of `lipsync train`.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lipsync_engine.model.network import LipSync3D, ModelDimensions  # noqa: E402


def step_time(width: float, batch: int, device: str) -> tuple[int, float]:
    torch.manual_seed(0)
    model = LipSync3D(ModelDimensions().scaled(width)).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    spec = torch.randn(batch, 256, 24, 2, device=device)
    prev = torch.rand(batch, 3, 128, 128, device=device)
    times = []
    for i in range(4):
        t0 = time.perf_counter()
        out = model(spec, prev)
        loss = sum(v.square().mean() for v in out.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return sum(p.numel() for p in model.parameters()), sorted(times)[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25, 0.125])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(f"# command: {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(f"# machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    for w in args.widths:
        n, t = step_time(w, args.batch, args.device)
        print(f"width {w:<6g} {n / 1e6:7.2f} M parameters  {t * 1e3:8.1f} ms per step of {args.batch} frames"
              f"  ({args.batch / t:7.1f} frames/s)", flush=True)


if __name__ == "__main__":
    main()
