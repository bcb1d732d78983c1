"""Training speed of `lipsync train`: steps/s per preset, and wall time to reach the quality bars.

Usage:
  .venv/bin/python benchmarks/bench_train.py steps [--widths 1 0.25 0.125] [--batch 32] [--device cpu]
      one training step (forward, SSIM + 3.0 L2 + 0.3 L1 loss, backward, Adam) per width, fp32 and
      bf16 autocast, median of --repeats after a warm-up, interleaved so that load changes hit both;
  .venv/bin/python benchmarks/bench_train.py quality SPEAKER_DIR MODEL_DIR [--epochs 60] [--eval-every 10]
      [--val-fraction 0.2] [--learning-rate 1e-3] [--preset cpu]
      trains in legs of --eval-every epochs (each leg resumes the last, exactly), evaluates the
      model on its held-out tail after each leg (lipsync evaluate) and prints when the issue's
      bars are met; training time excludes the evaluations. Writes MODEL_DIR/bench_quality.json.
  .venv/bin/python benchmarks/bench_train.py epoch SPEAKER_DIR --preset paper --device cuda
      time per epoch of a preset on a device (the GPU figure of docs/benchmarks.md).
  .venv/bin/python benchmarks/bench_train.py compile [--preset cpu] [--batch 32 ...] [--modes eager inductor]
      [--repeats 10]
      one training step as train.py runs it on a CPU (channels-last, fused Adam, the SSIM loss), eager
      against torch.compile (inductor): the first compiled step's time and the median step of each;
  .venv/bin/python benchmarks/bench_train.py heap [--rounds 2] [--repeats 15]
      the same eager step in fresh processes, alternately with glibc's default malloc settings and
      with train.py's (core/heap.py: freed blocks kept in the heap instead of returned as mmaps);
  .venv/bin/python benchmarks/bench_train.py last-layer [--batch 32] [--repeats 15]
      the texture decoder's last layer (bilinear 2x upsampling, then the 5x5 convolution to 3
      channels) forward and backward: network.UpsampledConv2d against nn.Upsample + nn.Conv2d;
  .venv/bin/python benchmarks/bench_train.py throughput SPEAKER_DIR [--epochs 3] [--precision auto off bf16]
      [--geometry-epochs N] [--profile]
      `lipsync train`'s default recipe end to end (data, steps, held-out tail, checkpoints), frames
      per second and seconds per epoch per mixed-precision setting (with --geometry-epochs N the
      epochs after the N-th train the texture alone, as after the stop); --profile adds the torch
      profiler's table of one training step at batch 32 (where the time goes).

Every run prints the load average, since the machine's 2 cores are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lipsync_engine.model.network import LipSync3D, ModelDimensions  # noqa: E402
from lipsync_engine.model.losses import ssim  # noqa: E402

BARS = {"openness_r": 0.8, "atlas_ssim": 0.9}   # the absolute bars (and: beat every baseline)


def _load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def _step(model, opt, batch, amp) -> float:
    spec, prev, lips, deltas, bs = batch
    t0 = time.perf_counter()
    with torch.autocast(spec.device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(spec, prev)
    out = {k: v.float() for k, v in out.items()}
    pred = (out["atlas_delta"]).clamp(-1, 1)
    loss = 1 - ssim((pred + 1) / 2, (lips + 1) / 2) + 3.0 * (out["vertex_deltas"] - deltas).square().sum(-1).mean() \
        + 0.3 * (out["blendshapes"] - bs).abs().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if spec.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def steps(args) -> None:
    g = torch.Generator().manual_seed(0)
    batch = [torch.randn(args.batch, 256, 24, 2, generator=g), torch.rand(args.batch, 3, 128, 128, generator=g) * 2 - 1,
             torch.rand(args.batch, 3, 128, 128, generator=g) * 2 - 1, torch.randn(args.batch, 468, 3, generator=g) * 0.1,
             torch.rand(args.batch, 52, generator=g)]
    batch = [b.to(args.device) for b in batch]
    for w in args.widths:
        torch.manual_seed(0)
        model = LipSync3D(ModelDimensions().scaled(w)).to(args.device)
        opt = torch.optim.Adam(model.parameters(), 1e-4)
        times = {"fp32": [], "bf16": []}
        _step(model, opt, batch, False), _step(model, opt, batch, True)     # warm-up
        for _ in range(args.repeats):
            for mode in times:
                times[mode].append(_step(model, opt, batch, mode == "bf16"))
        med = {m: sorted(t)[len(t) // 2] for m, t in times.items()}
        print(f"width {w:<6g} {sum(p.numel() for p in model.parameters()) / 1e6:7.2f} M parameters  "
              f"fp32 {med['fp32'] * 1e3:7.0f} ms/step ({1 / med['fp32']:5.2f} steps/s)  "
              f"bf16 autocast {med['bf16'] * 1e3:7.0f} ms/step ({1 / med['bf16']:5.2f} steps/s)  "
              f"bf16/fp32 {med['bf16'] / med['fp32']:.2f}  [{_load()}]", flush=True)


def _made_up_batch(batch: int) -> tuple:
    """(spectrograms, previous atlases, lips, vertex deltas) of `batch` made-up frames, the same for every
    run; the atlases channels-last, as train.py batches them (its lips come from (B, H, W, 3) rows)."""
    g = torch.Generator().manual_seed(0)
    spec = torch.randn(batch, 256, 24, 2, generator=g)
    prev = (torch.rand(batch, 3, 128, 128, generator=g) * 2 - 1).contiguous(memory_format=torch.channels_last)
    lips = (torch.rand(batch, 3, 128, 128, generator=g) * 2 - 1).contiguous(memory_format=torch.channels_last)
    return spec, prev, lips, torch.randn(batch, 468, 3, generator=g)


def compiled(args) -> None:
    """Eager against torch.compile (inductor) for one training step of a preset on the CPU, per batch size."""
    for batch in args.batch:
        _compiled(args, batch)


def heap(args) -> None:
    """One eager step in fresh processes, glibc's default heap against train.py's (core/heap.py)."""
    import subprocess

    for _ in range(args.rounds):
        for kept in (False, True):
            cmd = [sys.executable, __file__, "compile", "--modes", "eager", "--repeats", str(args.repeats)]
            line = subprocess.run(cmd + (["--keep-freed-memory"] if kept else []), capture_output=True,
                                  text=True, check=True).stdout.strip().splitlines()[-1]
            print(f"{'kept heap' if kept else 'default'}: {line}", flush=True)


def last_layer(args) -> None:
    """The texture decoder's last layer, forward and backward, both ways, alternately."""
    from lipsync_engine.core.heap import keep_freed_memory
    from lipsync_engine.model.network import UpsampledConv2d, preset_dimensions

    keep_freed_memory()         # as train.py runs
    c_in = preset_dimensions("cpu").texture_channels[-1]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, c_in, 64, 64, generator=g).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    grad = torch.randn(args.batch, 3, 128, 128, generator=g).contiguous(memory_format=torch.channels_last)
    fused = UpsampledConv2d(c_in, 3, 5).to(memory_format=torch.channels_last)
    plain = torch.nn.Sequential(torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                torch.nn.Conv2d(c_in, 3, 5, 1, 2)).to(memory_format=torch.channels_last)
    plain[1].load_state_dict(fused.state_dict())
    times = {"upsample + conv2d": [], "UpsampledConv2d": []}
    for _ in range(3 + args.repeats):
        for name, layer in (("upsample + conv2d", plain), ("UpsampledConv2d", fused)):
            t0 = time.perf_counter()
            layer(x).backward(grad)
            times[name].append(time.perf_counter() - t0)
    for name, t in times.items():
        t = sorted(t[3:])
        print(f"{name:<18} batch {args.batch}, {c_in} -> 3 channels, 64 -> 128 px: forward and backward median "
              f"{t[len(t) // 2] * 1e3:.1f} ms (min {t[0] * 1e3:.1f})  [{_load()}]", flush=True)


def _compiled(args, batch: int) -> None:
    from lipsync_engine.model.network import preset_dimensions

    spec, prev, lips, deltas = _made_up_batch(batch)
    for mode in args.modes:
        torch.manual_seed(0)
        model = LipSync3D(preset_dimensions(args.preset)).to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), 1e-3, fused=True)
        run = torch.compile(model) if mode == "inductor" else model

        def step() -> float:
            t0 = time.perf_counter()
            out = run(spec, prev)
            loss = 1 - ssim((out["atlas_delta"].clamp(-1, 1) + 1) / 2, (lips + 1) / 2) \
                + 30 * (out["vertex_deltas"] - 0.1 * deltas).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return time.perf_counter() - t0
        first = step()
        for _ in range(3):
            step()
        times = sorted(step() for _ in range(args.repeats))
        med = times[len(times) // 2]
        print(f"{mode:<9} preset {args.preset}, batch {batch}: first step {first:6.1f} s, median step "
              f"{med * 1e3:6.0f} ms (min {times[0] * 1e3:.0f}), {med * 1e3 / batch:.2f} ms a frame  [{_load()}]",
              flush=True)


def _meets(metrics: dict, beats: dict) -> dict:
    m = metrics["model"]
    ok = {k: m[k] >= v for k, v in BARS.items()}
    ok.update({f"beats_{k}": beats.get(k, False) for k in ("lmd_px", "openness_r", "lip_ssim")})
    return ok


def quality(args) -> None:
    from lipsync_engine.apps.evaluate import EvaluateOptions, evaluate_model
    from lipsync_engine.model.train import TrainOptions, train_speaker

    options = TrainOptions(preset=args.preset, epochs=args.eval_every, learning_rate=args.learning_rate,
                           val_fraction=args.val_fraction, batch_size=args.batch, seed=args.seed,
                           geometry_weight=args.geometry_weight, augment_gain_db=args.augment_gain_db,
                           augment_freq_mask=args.augment_freq_mask, lr_schedule=args.lr_schedule,
                           atlas_lr_scale=args.atlas_lr_scale, lip_weight=args.lip_weight,
                           geometry_epochs=args.geometry_epochs)
    dims = ModelDimensions().scaled(args.width) if args.width else None
    if args.atlas_code is not None:
        from lipsync_engine.model.network import preset_dimensions
        dims = replace(dims or preset_dimensions(args.preset), atlas_code=args.atlas_code)
    model_dir, log, train_s = Path(args.model), [], args.prior_train_s
    done = json.loads((model_dir / "config.json").read_text())["epochs_done"] if args.resume else 0
    first_pass = None
    for epochs in [e for e in range(args.eval_every, args.epochs + 1, args.eval_every) if e > done]:
        t0 = time.perf_counter()
        train_speaker(args.speaker, model_dir, replace(options, epochs=epochs), resume=args.resume or bool(log),
                      dims=dims)
        train_s += time.perf_counter() - t0
        r = evaluate_model(model_dir, args.speaker, model_dir / "evaluation", EvaluateOptions(write_plots=True))
        doc = json.loads(r.path.read_text())
        ok = _meets(r.metrics, doc["model_beats_baselines"])
        if all(ok.values()) and first_pass is None:
            first_pass = {"epochs": epochs, "train_s": round(train_s, 1)}
        row = {"epochs": epochs, "train_s": round(train_s, 1), "load": os.getloadavg(),
               "model": {k: r.metrics["model"][k] for k in ("lmd_px", "lip_ssim", "atlas_ssim", "openness_r",
                                                           "jitter_ratio", "texture_jitter_ratio", "blendshape_mae")},
               "bars": ok}
        log.append(row)
        print(json.dumps(row), flush=True)
    summary = {"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "legs": log,
               "first_pass_of_all_bars": first_pass, "baselines": {k: v for k, v in r.metrics.items() if k != "model"}}
    (model_dir / "bench_quality.json").write_text(json.dumps(summary, indent=1))
    print("all bars first met:", first_pass or "not within the budget")


def epoch(args) -> None:
    import shutil
    import tempfile

    from lipsync_engine.model.train import TrainOptions, train_speaker

    warm, timed = args.epochs, args.epochs
    for precision in args.precision:
        out = Path(tempfile.mkdtemp(prefix="bench_epoch_"))
        marks = {}           # frames done -> the time they were reached

        def note(p):
            marks.setdefault(p.done, time.perf_counter())
        try:
            options = TrainOptions(preset=args.preset, epochs=warm + timed, device=args.device, val_fraction=0.0,
                                   mixed_precision=precision)
            train_speaker(args.speaker, out / "model", options, on_progress=note)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        per_epoch = max(marks) // (warm + timed)
        # the first epochs include start-up and kernel selection: time the ones after them, from the last step
        # of the warm-up to the last step of all (each timed epoch with one checkpoint)
        dt = (marks[max(marks)] - marks[warm * per_epoch]) / timed
        print(f"{args.preset} on {args.device}, mixed precision {precision}: {dt:.2f} s/epoch of {per_epoch} frames "
              f"(epochs {warm + 1}-{warm + timed}), 500 epochs ~ {500 * dt / 60:.1f} min  [{_load()}]", flush=True)


def throughput(args) -> None:
    import shutil
    import tempfile

    from lipsync_engine.model.train import TrainOptions, train_speaker

    for precision in args.precision:
        options = TrainOptions(epochs=args.epochs, test_fraction=args.test_fraction, mixed_precision=precision,
                               geometry_epochs=args.geometry_epochs)
        dtype = _precision_text(precision)
        marks = {}           # epoch -> when its first step was reported
        out = Path(tempfile.mkdtemp(prefix="bench_train_"))
        try:
            frames = {"n": 0}
            t0 = time.perf_counter()
            def note(p):
                frames["n"] = p.done
                if p.stage == "train":
                    marks.setdefault(p.message.split()[1], time.perf_counter())
            train_speaker(args.speaker, out / "model", options, on_progress=note)
            dt = time.perf_counter() - t0
        finally:
            shutil.rmtree(out, ignore_errors=True)
        print(f"precision {precision} ({dtype}): {args.epochs} epochs, {frames['n']} frames (training + "
              f"held-out tail) in {dt:.1f} s = {frames['n'] / dt:.1f} frames/s end to end  [{_load()}]", flush=True)
        ends = sorted(marks.values())[1:] + [t0 + dt]
        print("  seconds per epoch (from its first step to the next's):",
              " ".join(f"{b - a:.1f}" for a, b in zip(sorted(marks.values()), ends)), flush=True)
    if args.profile:
        _profile_step(args.batch)


def _precision_text(precision: str) -> str:
    """What a TrainOptions.mixed_precision runs as on this CPU, e.g. 'fp32, texture path bf16'."""
    from lipsync_engine.model.train import autocast_dtype, texture_autocast_dtype

    cpu = torch.device("cpu")
    whole, texture = autocast_dtype(precision, cpu), texture_autocast_dtype(precision, cpu, True)
    return str(whole or "fp32") + (f", texture path {texture} where its gradient misses the geometry" if texture else "")


def _profile_step(batch: int) -> None:
    """The profiler's table of training steps at batch `batch` on made-up data, as train.py runs them."""
    from torch.profiler import ProfilerActivity, profile

    from lipsync_engine.model.network import preset_dimensions
    from lipsync_engine.model.train import autocast_dtype

    spec, prev, lips, deltas = _made_up_batch(batch)
    deltas = deltas * 0.1
    reference = torch.rand(3, 128, 128) * 2 - 1     # train.py adds the speaker's reference lips to the delta
    model = LipSync3D(preset_dimensions("cpu")).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    amp = autocast_dtype("auto", torch.device("cpu"))      # a step while the geometry learns: fp32 throughout

    def step():
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            out = model(spec, prev)
        pred = (out["atlas_delta"].float() + reference).clamp(-1, 1)
        loss = 1 - ssim((pred + 1) / 2, (lips + 1) / 2) + 30 * (out["vertex_deltas"].float() - deltas).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(5):
            step()
    print(f"# one training step, cpu preset, batch {batch}, mixed precision auto ({_precision_text('auto')}), 5 steps:")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15,
                                                             max_name_column_width=28, max_shapes_column_width=60))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("steps")
    s.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25, 0.125])
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--device", default="cpu")
    c = sub.add_parser("compile")
    c.add_argument("--preset", default="cpu")
    c.add_argument("--batch", type=int, nargs="+", default=[32])
    c.add_argument("--modes", nargs="+", choices=["eager", "inductor"], default=["eager", "inductor"])
    c.add_argument("--repeats", type=int, default=10)
    c.add_argument("--keep-freed-memory", action="store_true", help="glibc's heap as train.py sets it")
    ll = sub.add_parser("last-layer")
    ll.add_argument("--batch", type=int, default=32)
    ll.add_argument("--repeats", type=int, default=15)
    h = sub.add_parser("heap")
    h.add_argument("--rounds", type=int, default=2)
    h.add_argument("--repeats", type=int, default=15)
    q = sub.add_parser("quality")
    q.add_argument("speaker")
    q.add_argument("model")
    q.add_argument("--epochs", type=int, default=60)
    q.add_argument("--eval-every", type=int, default=10)
    q.add_argument("--val-fraction", type=float, default=0.2)
    q.add_argument("--learning-rate", type=float, default=1e-3)
    q.add_argument("--batch", type=int, default=32)
    q.add_argument("--preset", default="cpu")
    q.add_argument("--width", type=float)
    q.add_argument("--atlas-code", type=int, help="N_a (0 = no auto-regression, the Figure 5 ablation)")
    q.add_argument("--geometry-weight", type=float, default=3.0)
    q.add_argument("--augment-gain-db", type=float, default=0.0)
    q.add_argument("--augment-freq-mask", type=int, default=0)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--lr-schedule", default="constant", help="constant or cosine (use one leg: --eval-every = --epochs)")
    q.add_argument("--atlas-lr-scale", type=float, default=1.0)
    q.add_argument("--lip-weight", type=float, default=0.0, help="extra weight of the lip vertices in the vertex loss")
    q.add_argument("--geometry-epochs", type=int, default=0, help="freeze encoder, vertices and blendshapes after N")
    q.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    q.add_argument("--resume", action="store_true", help="continue MODEL's training (exactly, lipsync train --resume)")
    q.add_argument("--prior-train-s", type=float, default=0.0, help="training seconds already spent (with --resume)")
    e = sub.add_parser("epoch")
    e.add_argument("speaker")
    e.add_argument("--preset", default="paper")
    e.add_argument("--device", default="cuda")
    e.add_argument("--epochs", type=int, default=3, help="warm-up epochs, then as many timed")
    e.add_argument("--precision", nargs="+", default=["off", "bf16"], help="mixed-precision settings to compare")
    t = sub.add_parser("throughput")
    t.add_argument("speaker")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--test-fraction", type=float, default=0.2)
    t.add_argument("--precision", nargs="+", default=["auto"], help="mixed-precision settings to compare "
                   "(repeat them to interleave: off auto off auto)")
    t.add_argument("--geometry-epochs", type=int, default=0, help="freeze the geometry after N epochs, so the "
                   "later ones train the texture alone (0: the stop rule decides, as train does)")
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--profile", action="store_true", help="also print the profiler's table of one step")
    args = ap.parse_args()
    if getattr(args, "keep_freed_memory", False):
        from lipsync_engine.core.heap import keep_freed_memory
        keep_freed_memory()
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    print(f"# command: {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(f"# machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {_load()}", flush=True)
    {"steps": steps, "quality": quality, "epoch": epoch, "throughput": throughput, "compile": compiled,
     "heap": heap, "last-layer": last_layer}[args.what](args)


if __name__ == "__main__":
    main()
