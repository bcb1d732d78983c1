"""How the geometry's openness correlation moves epoch by epoch, on an inner split only.

    .venv/bin/python benchmarks/geometry_epoch_curve.py train SPEAKER MODEL [--no-phones] [--seed S]
        [--phone-dropout P] [--test-fraction F] [--weight-average E] [--average H[,H...]]
    .venv/bin/python benchmarks/geometry_epoch_curve.py plot OUT.png LABEL=MODEL [LABEL=MODEL ...]

train: the default recipe (`TrainOptions(test_fraction=0.1)`) with the geometry's stop turned off
(`geometry_patience=0`), so that every epoch's geometry is seen; after each epoch the openness r
of the raw geometry (no articulation gain: r does not depend on it) is computed on the
validation tail and on the test tail, and written to MODEL/curve.json with the gain each epoch
would get, the test tail's LMD (lip landmarks in atlas pixels, the gain applied) and amplitude
ratio. --average H,...: also running averages of the geometry's weights (an exponential moving
average over about H epochs of steps, updated after every step; it changes nothing in the
training itself, so the raw curve is the same run's), measured the same way each epoch under
"average" in curve.json (with --weight-average 0 the curve's own are the last step's weights;
by default they are train's own average, TrainOptions.weight_average). The stop rule's choice (train._early_stop: the best validation epoch, patience 5,
not before epoch 8) is printed at the end. Use it ONLY on a speaker cut by
benchmarks/inner_split.py, whose test tail is not the reported held-out part.
plot: the curves of several such runs in one PNG.
plot-average: for runs made with --weight-average 0 --average H, the inner test tail's r and LMD
of the last step's weights against average H, epoch by epoch (the stop rule's epochs dotted).

    .venv/bin/python benchmarks/geometry_epoch_curve.py plot-average OUT.png H LABEL=MODEL [LABEL=MODEL ...]
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipsync_engine.apps.evaluate import landmark_distance, landmark_pixels  # noqa: E402
from lipsync_engine.face.geometry import CylinderMap  # noqa: E402
from lipsync_engine.model import articulation, train  # noqa: E402
from lipsync_engine.prepare import dataset  # noqa: E402
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
        test_fraction: float = 0.1, horizons: list[float] = (),
        weight_average: float = train.TrainOptions().weight_average) -> None:
    curve = []
    fit, make_optimizer = train.fit_articulation, train._optimizer
    averages: dict = {}

    def optimizer_with_averages(net, options):
        opt = make_optimizer(net, options)
        n_train = int(round(averages["frames"] * (1 - options.val_fraction - options.test_fraction)))
        steps = max(1, math.ceil(n_train / options.batch_size))
        averages["w"] = {h: train.GeometryAverage(net, h, steps) for h in horizons}    # the trainer's own average
        opt.register_step_post_hook(lambda *_: [a.step() for a in averages["w"].values()])
        return opt

    def measure(net, data, rows, spec_scale, device, speaker_art, centre=None) -> dict:
        centre = centre or train.articulation_centre(net, data, averages["train_rows"], spec_scale, device, speaker_art)
        result = fit(net, data, rows, spec_scale, device, centre, speaker_art)
        test = torch.arange(int(rows[-1]) + 1, len(data))
        deltas, _ = train._geometry_outputs(net, data, test, spec_scale, device)
        ref = data.reference_vertices.numpy()
        true_v = ref + data.deltas[test].numpy()
        pred_v = ref + articulation.apply_gain(deltas, result["gain"], centre["mean_vertex_deltas"],
                                               centre["opening_direction"], articulation.gain_rest(result, ref))
        breaks = (data.previous[test] < 0).numpy()
        breaks[0] = True
        pred, true = mouth_openness(ref + deltas), mouth_openness(true_v)
        cylinder = CylinderMap.from_dict(data.meta["cylinder"])
        return {"val_r": result.get("openness_r"), "test_r": float(np.corrcoef(pred, true)[0, 1]),
                "gain": result.get("gain"),
                "test_lmd": landmark_distance(landmark_pixels(pred_v, cylinder), landmark_pixels(true_v, cylinder)),
                "test_amp": articulation.amplitude_ratio(mouth_openness(pred_v), true, breaks)}, result

    def fit_and_measure(net, data, rows, spec_scale, device, centre, speaker_art=None):
        averages.setdefault("train_rows", torch.arange(0, int(rows[0])))
        row, result = measure(net, data, rows, spec_scale, device, speaker_art, centre)
        row["average"] = {}
        for h in horizons:
            averages["w"][h].swap()
            row["average"][str(h)] = measure(net, data, rows, spec_scale, device, speaker_art)[0]
            averages["w"][h].swap()
        curve.append(row)
        text = "; ".join(f"avg {h}: r {a['val_r']:.3f}/{a['test_r']:.3f} lmd {a['test_lmd']:.3f}"
                         for h, a in row["average"].items())
        print(f"epoch {len(curve)}: validation r {row['val_r']:.3f}, test r {row['test_r']:.3f}, gain {row['gain']:.2f},"
              f" test lmd {row['test_lmd']:.3f} amp {row['test_amp']:.2f}; {text}", flush=True)
        return result

    averages["frames"] = int(json.loads((speaker / dataset.META).read_text()).get("frames", 0)) or \
        len(np.load(speaker / "frame_index.npy", mmap_mode="r"))
    train.fit_articulation = fit_and_measure
    if horizons:
        train._optimizer = optimizer_with_averages
    t0 = time.perf_counter()
    train.train_speaker(speaker, model, train.TrainOptions(test_fraction=test_fraction, geometry_patience=0,
                                                           phones=phones, seed=seed, phone_dropout=phone_dropout,
                                                           weight_average=weight_average))
    (model / "curve.json").write_text(json.dumps(curve, indent=1))
    kept = stop_choice([c["val_r"] for c in curve])
    print(f"{time.perf_counter() - t0:.0f} s; the stop rule would keep epoch {kept}: test r {curve[kept - 1]['test_r']:.3f}"
          f" lmd {curve[kept - 1]['test_lmd']:.3f} (best test r {max(c['test_r'] for c in curve):.3f})")
    for h in horizons:
        avg = [c["average"][str(h)] for c in curve]
        k = stop_choice([a["val_r"] for a in avg])
        print(f"average over {h} epochs: the stop rule would keep epoch {k}: test r {avg[k - 1]['test_r']:.3f}"
              f" lmd {avg[k - 1]['test_lmd']:.3f} amp {avg[k - 1]['test_amp']:.2f}"
              f" (best test r {max(a['test_r'] for a in avg):.3f})")


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


def plot_average(out: Path, horizon: str, runs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.get_cmap("tab10").colors
    for i, run_spec in enumerate(runs):
        label, model = run_spec.split("=", 1)
        curve = json.loads((Path(model) / "curve.json").read_text())
        epochs = np.arange(1, len(curve) + 1)
        for what, rows, ls in (("last step", curve, ":"), (f"average {horizon}", [c["average"][horizon] for c in curve], "-")):
            kept = stop_choice([c["val_r"] for c in rows])
            for ax, key in zip(axes, ("test_r", "test_lmd")):
                ax.plot(epochs, [c[key] for c in rows], ls, color=colors[i % len(colors)], label=f"{label}, {what}")
                ax.plot([kept], [rows[kept - 1][key]], "o", color=colors[i % len(colors)])
    for ax, what in zip(axes, ("mouth-openness r (raw geometry)", "LMD px (the gain applied)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.set_title("inner test tail (dots: the epoch the stop rule keeps)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.savefig(out, dpi=80, bbox_inches="tight")


def main(argv: list[str]) -> int:
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    if len(argv) >= 3 and argv[0] == "train":
        def option(name: str, default: float) -> float:
            return float(argv[argv.index(name) + 1]) if name in argv else default
        run(Path(argv[1]), Path(argv[2]), "--no-phones" not in argv, int(option("--seed", 0)),
            option("--phone-dropout", train.TrainOptions().phone_dropout), option("--test-fraction", 0.1),
            [float(h) for h in argv[argv.index("--average") + 1].split(",")] if "--average" in argv else [],
            option("--weight-average", train.TrainOptions().weight_average))
    elif len(argv) >= 4 and argv[0] == "plot-average":
        plot_average(Path(argv[1]), argv[2], argv[3:])
    elif len(argv) >= 3 and argv[0] == "plot":
        plot(Path(argv[1]), argv[2:])
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
