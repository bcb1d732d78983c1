"""How the geometry's openness correlation moves epoch by epoch, on an inner split only.

    .venv/bin/python benchmarks/geometry_epoch_curve.py train SPEAKER MODEL [--no-phones] [--seed S]
        [--phone-dropout P] [--test-fraction F]
    .venv/bin/python benchmarks/geometry_epoch_curve.py plot OUT.png LABEL=MODEL [LABEL=MODEL ...]

train: the default recipe (`TrainOptions(test_fraction=0.1)`) with the geometry's stop turned off
(`geometry_patience=0`), so that every epoch's geometry is seen; after each epoch the openness r
of the raw geometry (no articulation gain: r does not depend on it) is computed on the
validation tail and on the test tail, and written to MODEL/curve.json with the gain each epoch
would get. The stop rule's choice (train._early_stop: the best validation epoch, patience 5,
not before epoch 8) is printed at the end. Use it ONLY on a speaker cut by
benchmarks/inner_split.py, whose test tail is not the reported held-out part.
plot: the curves of several such runs in one PNG.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipsync_engine.model import train  # noqa: E402
from lipsync_engine.prepare.normalize import mouth_openness  # noqa: E402


def stop_choice(val_r: list[float], patience: int = 5) -> int:
    """The epoch (1-based) whose geometry train._early_stop keeps, from the validation r per epoch
    (the rule itself: train.stop_step)."""
    stop, best = {}, 0
    for epoch, r in enumerate(val_r):
        step = train.stop_step(stop, r, epoch, patience)
        if step == "best":
            best = epoch + 1
        elif step == "stop":
            break
    return best


def run(speaker: Path, model: Path, phones: bool, seed: int, phone_dropout: float = train.TrainOptions().phone_dropout,
        test_fraction: float = 0.1) -> None:
    curve = []
    fit = train.fit_articulation

    def fit_and_measure(net, data, rows, spec_scale, device, centre, speaker_art=None):
        result = fit(net, data, rows, spec_scale, device, centre, speaker_art)
        test = torch.arange(int(rows[-1]) + 1, len(data))
        deltas, _ = train._geometry_outputs(net, data, test, spec_scale, device)
        ref = data.reference_vertices.numpy()
        pred, true = mouth_openness(ref + deltas), mouth_openness(ref + data.deltas[test].numpy())
        curve.append({"val_r": result.get("openness_r"), "test_r": float(np.corrcoef(pred, true)[0, 1]),
                      "gain": result.get("gain")})
        c = curve[-1]
        print(f"epoch {len(curve)}: validation r {c['val_r']:.3f}, test r {c['test_r']:.3f}, gain {c['gain']:.2f}",
              flush=True)
        return result

    train.fit_articulation = fit_and_measure
    t0 = time.perf_counter()
    train.train_speaker(speaker, model, train.TrainOptions(test_fraction=test_fraction, geometry_patience=0,
                                                           phones=phones, seed=seed, phone_dropout=phone_dropout))
    (model / "curve.json").write_text(json.dumps(curve, indent=1))
    kept = stop_choice([c["val_r"] for c in curve])
    print(f"{time.perf_counter() - t0:.0f} s; the stop rule would keep epoch {kept}: test r {curve[kept - 1]['test_r']:.3f}"
          f" (best test r {max(c['test_r'] for c in curve):.3f})")


def plot(out: Path, runs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = plt.get_cmap("tab10").colors
    for i, run_spec in enumerate(runs):
        label, model = run_spec.split("=", 1)
        curve = json.loads((Path(model) / "curve.json").read_text())
        epochs = np.arange(1, len(curve) + 1)
        kept = stop_choice([c["val_r"] for c in curve])
        style = {"color": colors[i % len(colors)], "ls": ("-", "--")[i // len(colors) % 2]}
        for ax, key in zip(axes, ("test_r", "val_r")):
            ax.plot(epochs, [c[key] for c in curve], label=label, **style)
            ax.plot([kept], [curve[kept - 1][key]], "o", color=style["color"])
    for ax, what in zip(axes, ("inner test tail", "validation tail")):
        ax.set_xlabel("epoch")
        ax.set_title(f"{what} (dots: the epoch the stop rule keeps)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mouth-openness r (raw geometry)")
    axes[1].legend(fontsize=8)
    fig.savefig(out, dpi=80, bbox_inches="tight")


def main(argv: list[str]) -> int:
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    if len(argv) >= 3 and argv[0] == "train":
        def option(name: str, default: float) -> float:
            return float(argv[argv.index(name) + 1]) if name in argv else default
        run(Path(argv[1]), Path(argv[2]), "--no-phones" not in argv, int(option("--seed", 0)),
            option("--phone-dropout", train.TrainOptions().phone_dropout), option("--test-fraction", 0.1))
    elif len(argv) >= 3 and argv[0] == "plot":
        plot(Path(argv[1]), argv[2:])
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
