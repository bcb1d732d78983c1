"""How much of a speaker's held-out mouth openness can audio explain? Two probes, no texture.

Usage (from the repository root, after `make venv`; SPEAKER is a prepared speaker directory):
    .venv/bin/python benchmarks/openness_ceiling.py ridge SPEAKER --val-fraction 0.2
    .venv/bin/python benchmarks/openness_ceiling.py geometry SPEAKER --val-fraction 0.2 --epochs 40 --lip-weight 10
    .venv/bin/python benchmarks/openness_ceiling.py geometry SPEAKER --limit 0.8 --val-fraction 0.125   # inner split

ridge: linear ridge regression from log spectrogram magnitudes (32 bands x 24 columns,
standardized on the training frames) to mouth openness, for several regularizations, and
with the audio shifted by -4..4 frames (an audio-video offset would show as a better shift).
geometry: the model's audio encoder and geometry decoder alone (cpu preset, PCA-initialized,
Adam), trained on the vertex loss with the lip loops weighted 1 + --lip-weight; prints the
openness correlation on training and held-out frames every 5 epochs. The held-out frames are
the contiguous tail, as in `lipsync train`; --limit first keeps only that leading fraction of
the frames (an inner split that never sees the real held-out part).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipsync_engine.prepare.dataset import open_speaker  # noqa: E402
from lipsync_engine.model.network import AudioEncoder, GeometryDecoder, preset_dimensions  # noqa: E402
from lipsync_engine.prepare.normalize import mouth_openness  # noqa: E402
from lipsync_engine.face.topology import load_topology  # noqa: E402


def _data(args):
    ds = open_speaker(args.speaker)
    n = int(len(ds) * args.limit)
    cut = n - int(round(n * args.val_fraction))
    return ds, n, cut


def ridge(args) -> None:
    ds, n, cut = _data(args)
    spec = np.asarray(ds.spectrograms[:n], np.float32)
    mag = np.log1p(np.hypot(spec[..., 0], spec[..., 1]))                   # (n, 256, 24)
    x = mag.reshape(n, 32, 8, -1).mean(2).reshape(n, -1)
    z = (x - x[:cut].mean(0)) / (x[:cut].std(0) + 1e-6)
    y = mouth_openness(np.asarray(ds.vertices[:n]))
    def fit(z, lam):
        w = np.linalg.solve(z[:cut].T @ z[:cut] + lam * np.eye(z.shape[1]), z[:cut].T @ (y[:cut] - y[:cut].mean()))
        p = z @ w
        return np.corrcoef(p[:cut], y[:cut])[0, 1], np.corrcoef(p[cut:], y[cut:])[0, 1]

    for lam in (1, 10, 100, 1000):
        r_train, r_held = fit(z, lam)
        print(f"ridge lambda {lam:>5}: openness r train {r_train:.3f}, held-out {r_held:.3f}")
    # audio-video offset: openness of frame t from the audio window of frame t + lag (lambda 100)
    for lag in range(-4, 5):
        shifted = x[np.clip(np.arange(n) + lag, 0, n - 1)]
        r_train, r_held = fit((shifted - shifted[:cut].mean(0)) / (shifted[:cut].std(0) + 1e-6), 100)
        print(f"ridge lambda   100, audio shifted by {lag:+d} frame(s): train {r_train:.3f}, held-out {r_held:.3f}")


def geometry(args) -> None:
    torch.manual_seed(args.seed)
    ds, n, cut = _data(args)
    spec = torch.from_numpy(np.asarray(ds.spectrograms[:n], np.float32))
    ref = np.asarray(ds.reference_vertices, np.float32)
    verts = np.asarray(ds.vertices[:n], np.float32)
    deltas = torch.from_numpy(verts - ref)
    train, val = torch.arange(cut), torch.arange(cut, n)
    spec = spec / spec[train].std()
    dims = preset_dimensions("cpu")
    enc, geo = AudioEncoder(dims), GeometryDecoder(dims)
    geo.init_from_pca(deltas[train])
    opt = torch.optim.Adam([*enc.parameters(), *geo.parameters()], lr=args.learning_rate)
    topo = load_topology()
    weight = torch.ones(verts.shape[1])
    weight[np.unique(np.r_[topo.lips_outer, topo.lips_inner])] += args.lip_weight
    truth = mouth_openness(verts)

    def r(rows):
        enc.eval(), geo.eval()
        with torch.no_grad():
            pred = torch.cat([geo(enc(spec[rows[s:s + 256]])) for s in range(0, len(rows), 256)]).numpy() + ref
        enc.train(), geo.train()
        return np.corrcoef(mouth_openness(pred), truth[rows.numpy()])[0, 1]

    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        for rows in train[torch.randperm(len(train))].split(args.batch):
            loss = ((geo(enc(spec[rows])) - deltas[rows]).square().sum(-1) * weight).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % 5 == 0 or epoch == args.epochs:
            print(f"epoch {epoch:>3}: openness r train {r(train):.3f}, held-out {r(val):.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("probe", choices=("ridge", "geometry"))
    ap.add_argument("speaker", type=Path)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--limit", type=float, default=1.0, help="use only this leading fraction of the frames")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--lip-weight", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print("# command:", " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    torch.set_num_threads(2)
    (ridge if args.probe == "ridge" else geometry)(args)


if __name__ == "__main__":
    main()
