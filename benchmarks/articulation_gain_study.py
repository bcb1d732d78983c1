"""Which articulation gain holds on frames the model never saw? The speaker's amplitude from the
validation tail alone (the rule before 2026-12-06) or from all training and validation frames;
matched on the opening component (before 2026-12-07) or on the lip gap itself.

    .venv/bin/python benchmarks/articulation_gain_study.py MODEL SPEAKER [--inner-test] [--copy-lip-gap DIR]

MODEL trained on SPEAKER (lipsync train). Prints the pooled std of the opening component
(articulation.opening_component) of the model's geometry and of the truth on its training and
validation frames, the gain each rule gives, and, with --inner-test, the amplitude ratio each
gain gives on the model's test tail (of the opening component, and of the lip gap). Use --inner-test ONLY when that tail is an inner split
(a speaker cut by benchmarks/inner_split.py), never on the reported held-out part.
--copy-lip-gap DIR writes a copy of MODEL whose stored gain is the lip-gap rule's (what
`lipsync train` fits since 2026-12-07), to score with `lipsync evaluate DIR SPEAKER`: the weights
are the same, so only the rule differs.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipsync_engine.model import articulation  # noqa: E402
from lipsync_engine.model.checkpoint import load_model  # noqa: E402
from lipsync_engine.model.train import SpeakerTensors, _geometry_outputs, _split  # noqa: E402

print(f"# command: {' '.join(sys.argv)}")
model_dir, speaker = Path(sys.argv[1]), Path(sys.argv[2])
model, config, extra = load_model(model_dir)
data = SpeakerTensors(speaker, None, config["options"].get("lookahead_ms", 120.0),
                      config["dims"].get("phone_context", 0) > 0)    # a model that hears phones (format 3)
o = config["options"]
tr, va = _split(len(data), o["val_fraction"], o["test_fraction"])
te = torch.arange(int(va[-1]) + 1, len(data))
ref = data.reference_vertices.numpy()
u, mean = extra["opening_direction"].numpy(), extra["mean_vertex_deltas"].numpy()
def comp(rows):
    d, _ = _geometry_outputs(model, data, rows, config["spectrogram_scale"], "cpu")
    t = data.deltas[rows].numpy()
    br = (data.previous[rows] < 0).numpy(); br[0] = True
    return (articulation.opening_component(d, mean, u), articulation.opening_component(t, mean, u), br)
inner = "--inner-test" in sys.argv[3:]
copy_to = Path(sys.argv[sys.argv.index("--copy-lip-gap") + 1]) if "--copy-lip-gap" in sys.argv[3:] else None
P = {k: comp(r) for k, r in (("train", tr), ("val", va)) + ((("test", te),) if inner else ())}
std = {k: (articulation.pooled_std(p, b), articulation.pooled_std(t, b)) for k, (p, t, b) in P.items()}
for k, (sp, st) in std.items(): print(f"{k:5s} n={len(P[k][0]):4d} pred std {sp:.4f} true std {st:.4f} raw ratio {sp/st:.2f}")
rules = {"val/val (before 2026-12-06)": std["val"][1] / std["val"][0],
         "train+val true / val pred": articulation.pooled_std(np.r_[P["train"][1], P["val"][1]], np.r_[P["train"][2], P["val"][2]]) / std["val"][0],
         "train true / val pred": std["train"][1] / std["val"][0]}
for name, g in rules.items():
    print(f"{name:30s} gain {g:.2f}" + (f" -> inner-test amplitude ratio {g * std['test'][0] / std['test'][1]:.2f}" if inner else ""))

# The lip gap (mouth openness, what the amplitude ratio measures) under each gain: the model's
# deltas with the gain applied along the opening direction, as predict applies it to a model
# trained since 2026-12-08 (the motion added follows the lip gap: articulation.apply_gain with
# the rest face); and the rule train.fit_articulation uses since 2026-12-07
# (articulation.fit_gain_to_lip_gap).
from lipsync_engine.prepare.normalize import mouth_openness  # noqa: E402


def outputs(rows):
    d, _ = _geometry_outputs(model, data, rows, config["spectrogram_scale"], "cpu")
    br = (data.previous[rows] < 0).numpy(); br[0] = True
    return d, br


def gap_std(rows, gain: float) -> tuple[float, float]:
    d, br = outputs(rows)
    p = mouth_openness(ref + articulation.apply_gain(d, gain, mean, u, ref))
    return articulation.pooled_std(p, br), articulation.pooled_std(mouth_openness(ref + data.deltas[rows].numpy()), br)


speaker_rows = torch.cat([tr, va])
br_s = (data.previous[speaker_rows] < 0).numpy(); br_s[0] = True
speaker_gap = articulation.pooled_std(mouth_openness(ref + data.deltas[speaker_rows].numpy()), br_s)
for name, rows in (("lip gap: train+val true / val pred", va), ("lip gap: train+val / train+val", speaker_rows)):
    d, br = outputs(rows)
    rules[name] = articulation.fit_gain_to_lip_gap(d, ref, mean, u, br, speaker_gap)
    print(f"{name:30s} gain {rules[name]:.2f}")
if inner:
    for name, g in rules.items():
        p, t = gap_std(te, g)
        print(f"  {name:36s} gain {g:.2f} -> inner-test lip-gap amplitude ratio {p / t:.2f}")
    for k, r in (("train", tr), ("val", va), ("test", te)):
        p, t = gap_std(r, 1.0)
        print(f"  raw lip-gap ratio on {k}: {p / t:.2f}")
if copy_to is not None:
    shutil.copytree(model_dir, copy_to, ignore=shutil.ignore_patterns("evaluation", "train_state.pt"))
    cfg = json.loads((copy_to / "config.json").read_text())
    cfg["articulation"]["gain"] = rules["lip gap: train+val true / val pred"]
    (copy_to / "config.json").write_text(json.dumps(cfg, indent=1))
    print(f"wrote {copy_to} (gain {cfg['articulation']['gain']:.4f}); score it: lipsync evaluate {copy_to} {speaker}")
