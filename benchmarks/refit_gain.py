"""A copy of a trained model whose articulation gain is fitted again with the current code.

    .venv/bin/python benchmarks/refit_gain.py MODEL COPY [--plot PNG [--seconds S]]
    .venv/bin/lipsync evaluate COPY SPEAKER

COPY must be a new folder. The weights, the mouth bank, the centre of the gain (the model's mean
prediction and the speaker's opening direction) and every other file are copied unchanged; the
gain is fitted as `lipsync train` fits it at the end (train.fit_articulation on the model's
validation tail of its own speaker, which must still be the one it was trained on), and the
config's "articulation" entry is replaced. Training never reads the gain, so the copy is what
the same training run would save today. Compares gain rules on one network: choose with it on
inner splits (benchmarks/inner_split.py); on a reported split it only shows what a chosen change
does alone. `--plot PNG` draws the mouth openness of the model's held-out tail (its first S
seconds, default 12): the recording's, MODEL's and COPY's, with their openness r.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipsync_engine.model import checkpoint, train  # noqa: E402
from lipsync_engine.prepare.normalize import mouth_openness  # noqa: E402


def plot(path: Path, before: Path, after: Path, config: dict, seconds: float) -> None:
    """The held-out tail's openness: the recording's, `before`'s and `after`'s (as evaluate predicts them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lipsync_engine.apps import evaluate
    from lipsync_engine.prepare.phones import speaker_phones

    _, test = evaluate.resolve_held_out(config, Path(config["speaker"]))
    fps = float(config["fps"][0] if isinstance(config["fps"], list) else config["fps"])
    rows = test.rows[: int(seconds * fps)]
    part = evaluate._frames(test.ds, rows)
    spec = np.asarray(test.ds.spectrograms[rows])
    phones = speaker_phones(test.ds.path, rows=rows)[rows] if config["dims"].get("phone_context") else None
    truth = mouth_openness(part.vertices())
    fig, ax = plt.subplots(figsize=(12, 3.4))
    t = np.arange(len(rows)) / fps
    ax.plot(t, truth, color="black", lw=2.2, label="recording")
    for name, model, colour in (("before", before, "tab:blue"), ("after", after, "tab:red")):
        out = evaluate.model_prediction(model, spec, part.breaks, "cpu", texture="network", phones=phones)
        o = mouth_openness(out.vertices)
        gain = json.loads((model / "config.json").read_text())["articulation"]
        ax.plot(t, o, color=colour, lw=1.2, label=f"{name}: gain {gain['gain']:.2f} along the "
                f"{'lip gap' if gain.get('component') else 'projection'} (r = {np.corrcoef(o, truth)[0, 1]:.2f})")
    ax.set_xlabel("held-out time (s, segments joined)")
    ax.set_ylabel("mouth openness (lip gap / face height)")
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("copy", type=Path)
    ap.add_argument("--plot", type=Path, help="draw the held-out openness before and after into this PNG")
    ap.add_argument("--seconds", type=float, default=12.0, help="of the held-out tail to draw (default 12)")
    args = ap.parse_args(argv)
    if args.copy.exists():      # never replace a folder: it may be the model itself or someone's work
        print(f"error: {args.copy}: already exists; name a new folder for the copy", file=sys.stderr)
        return 1
    model, config, extra = checkpoint.load_model(args.model, "cpu")
    options = config["options"]
    data = train.SpeakerTensors(config["speaker"], None, float(options.get("lookahead_ms", 120.0)),
                                int(config["dims"].get("phone_context") or 0) > 0)
    if len(data) != int(config["frames"]):
        print(f"error: {config['speaker']}: has {len(data)} frames, the model was trained on {config['frames']}",
              file=sys.stderr)
        return 1
    n_train, n_val = int(config["split"]["train_frames"]), int(config["split"]["val_frames"])
    train_idx, val_idx = torch.arange(n_train), torch.arange(n_train, n_train + n_val)
    speaker = train.speaker_articulation(data, train_idx, torch.cat([train_idx, val_idx]))
    centre = {k: extra[k].float().numpy() for k in ("mean_vertex_deltas", "mean_blendshapes", "opening_direction")}
    before = config.get("articulation") or {}
    art = train.fit_articulation(model, data, val_idx, float(config["spectrogram_scale"]), torch.device("cpu"),
                                 centre, speaker)
    shutil.copytree(args.model, args.copy, ignore=shutil.ignore_patterns("train_state.pt", "evaluation"))
    config["articulation"] = art
    (args.copy / "config.json").write_text(json.dumps(config, indent=1))
    print(f"{args.copy}: gain {before.get('gain', 1.0):.3f} ({before.get('component', 'projection')}) -> "
          f"{art['gain']:.3f} ({art.get('component', 'projection')})")
    if args.plot:
        plot(args.plot, args.model, args.copy, config, args.seconds)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
