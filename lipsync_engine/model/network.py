"""The LipSync3D network (paper Section 3.2 and Appendix G), as torch modules.

Owns: the shared audio encoder, the geometry, texture and blendshape decoders, the
auto-regressive atlas encoder, their dimensions (ModelDimensions in dims.py, stored
in every checkpoint), and the one auto-regressive loop that runs the texture
decoder frame after frame on its own output (autoregressive_lips: prediction and
evaluation both use it, as nanoGPT's model.py holds generate()). Must not: load data,
train, or read files.

Shapes (B = batch):
    spectrogram (B, 256, 24, 2)  -> audio code (B, N_s)                     # N_s = 32
    previous lip atlas (B, 3, 128, 128) in [-1, 1] -> atlas code (B, N_a)   # N_a = 2
    audio code -> vertex deltas (B, 468, 3); [audio code, atlas code] -> lip atlas delta
    (B, 3, 128, 128) in [-1, 1] (tanh); audio code -> blendshape coefficients (B, 52)

Channel counts of the audio encoder are not in the paper; they follow the network it cites
([19] Karras et al. 2017: 72, 108, 162, 243, 256 filters in the formant layers and 256 in
the articulation layers). Everything else is as published (Table 4, Table 5, Section 3.2).
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..face.geometry import LIP_SIZE
from .dims import (LEAKY_SLOPE, N_BLENDSHAPES, N_COLUMNS, N_FREQ, N_VERTICES, PRESETS,  # noqa: F401
                   ModelDimensions, preset_dimensions)


class AudioEncoder(nn.Module):
    """(B, 256, 24, 2) complex spectrogram -> (B, N_s): 6 convs over frequency, 6 over time."""

    def __init__(self, dims: ModelDimensions):
        super().__init__()
        layers, c_in = [], 2
        for c in dims.freq_channels:
            layers += [nn.Conv2d(c_in, c, (3, 1), (2, 1), (1, 0)), nn.LeakyReLU(LEAKY_SLOPE)]
            c_in = c
        for c in dims.time_channels:
            layers += [nn.Conv2d(c_in, c, (1, 3), (1, 2), (0, 1)), nn.LeakyReLU(LEAKY_SLOPE)]
            c_in = c
        self.convs = nn.Sequential(*layers)
        freq, time = N_FREQ // 2 ** 6, 1  # 256 -> 4; 24 -> 12 -> 6 -> 3 -> 2 -> 1 -> 1
        self.fc = nn.Linear(c_in * freq * time, dims.audio_code)
        self.n_phones = dims.n_phones
        # beyond the paper: the phone labels around the frame (prepare/phones.py), one-hot, added
        # into the code; starts at zero, so training begins from the paper's network
        self.phones = nn.Linear(dims.phone_inputs, dims.audio_code) if dims.phone_inputs else None
        if self.phones is not None:
            nn.init.zeros_(self.phones.weight)
            nn.init.zeros_(self.phones.bias)

    def forward(self, spectrogram: torch.Tensor, phones: torch.Tensor | None = None,
                phone_keep: torch.Tensor | None = None) -> torch.Tensor:
        """phones : (B, phone_context) integer labels, needed when the model reads phones.
        phone_keep : (B,) 1 or 0 per frame, training only (TrainOptions.phone_dropout): 0 leaves
        the phones out of that frame's code, which then comes from the spectrogram alone."""
        if spectrogram.shape[1:] != (N_FREQ, N_COLUMNS, 2):
            raise ValueError(f"spectrogram must be (B, {N_FREQ}, {N_COLUMNS}, 2), got {tuple(spectrogram.shape)}")
        x = self.convs(spectrogram.permute(0, 3, 1, 2))  # (B, 2, F, T) -> (B, C, 4, 1)
        code = self.fc(x.flatten(1))
        if self.phones is None:
            return code
        if phones is None:
            raise ValueError("this model reads phone labels with its spectrograms (prepare/phones.py)")
        onehot = nn.functional.one_hot(phones.long(), self.n_phones).to(code.dtype).flatten(1)
        term = self.phones(onehot)
        if phone_keep is not None:
            term = term * phone_keep.to(term.dtype)[:, None]
        return code + term


class GeometryDecoder(nn.Module):
    """Audio code -> vertex deltas (B, 468, 3); linear layers, last one initialised from PCA."""

    def __init__(self, dims: ModelDimensions):
        super().__init__()
        self.hidden = nn.Linear(dims.audio_code, dims.geometry_hidden)
        self.dropout = nn.Dropout(dims.geometry_dropout)
        self.out = nn.Linear(dims.geometry_hidden, dims.n_vertices * 3)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(self.hidden(code))).view(code.shape[0], -1, 3)

    @torch.no_grad()
    def init_from_pca(self, deltas: torch.Tensor) -> torch.Tensor:
        """Set the last layer to the PCA of training deltas (N, 468, 3): bias = mean, weight
        columns = principal directions scaled by their standard deviations. Returns the
        explained-variance fraction of the kept components."""
        x = deltas.reshape(len(deltas), -1).double()
        mean = x.mean(0)
        u, s, vt = torch.linalg.svd(x - mean, full_matrices=False)
        k = min(self.out.in_features, vt.shape[0])
        std = s[:k] / max(len(x) - 1, 1) ** 0.5
        weight = torch.zeros_like(self.out.weight, dtype=torch.float64)
        weight[:, :k] = (vt[:k] * std[:, None]).T
        self.out.weight.copy_(weight)
        self.out.bias.copy_(mean)
        return (s[:k] ** 2).sum() / (s ** 2).sum().clamp_min(1e-12)


@lru_cache(maxsize=8)
def _phase_index(c_out: int, c_in: int, k: int) -> tuple[torch.Tensor, int]:
    """Where each tap of the phase-space kernel comes from in a (c_out, c_in, k, k) kernel (its
    flattened index; c_out * c_in * k * k, one past the end, for a zero tap), and its padding.

    On the 2x-upsampled map U, output pixel (2m + a, 2n + b) reads U at (2m + a + dy, 2n + b + dx)
    for |dy|, |dx| <= k // 2: the input phase ((a + dy) % 2, (b + dx) % 2) at phase-grid offset
    ((a + dy) // 2, (b + dx) // 2). Input channels are ordered as the phase stencil's, c * 4 + row
    phase * 2 + column phase; output channels phase first, (row phase * 2 + column phase) * c_out
    + c, as _interleave_phases reads them."""
    p = k // 2
    pad = (p + 1) // 2
    t = 2 * pad + 1
    idx = torch.full((2, 2, c_out, c_in, 2, 2, t, t), c_out * c_in * k * k, dtype=torch.long)
    flat = torch.arange(c_out * c_in * k * k).view(c_out, c_in, k, k)
    for a in range(2):
        for b in range(2):
            for dy in range(-p, p + 1):
                for dx in range(-p, p + 1):
                    ry, rx = a + dy, b + dx
                    idx[a, b, :, :, ry % 2, rx % 2, ry // 2 + pad, rx // 2 + pad] = flat[:, :, dy + p, dx + p]
    return idx.reshape(c_out * 4, c_in * 4, t, t), pad


def _interleave_phases(y: torch.Tensor, c: int) -> torch.Tensor:
    """(B, 4c, h, w) with channels (row phase, column phase, channel) -> (B, c, 2h, 2w), output pixel
    (2m + a, 2n + b) from phase (a, b) at (m, n): pixel_shuffle for phase-first channels. A
    channels-last input gives a channels-last output in one copy of runs of 2c floats (forward
    and backward 3 ms at batch 32 with c = 3, pixel_shuffle's float-by-float 6 ms)."""
    b, _, h, w = y.shape
    if y.is_contiguous(memory_format=torch.channels_last):
        rows = y.permute(0, 2, 3, 1).reshape(b, h, w, 2, 2, c).transpose(2, 3)     # (B, h, a, w, b, c)
        return rows.reshape(b, 2 * h, 2 * w, c).permute(0, 3, 1, 2)
    return y.unflatten(1, (2, 2, c)).permute(0, 3, 4, 1, 5, 2).reshape(b, c, 2 * h, 2 * w)


@lru_cache(maxsize=8)
def _phase_stencil(channels: int, dtype: torch.dtype) -> torch.Tensor:
    """(4 * channels, 1, 3, 3): bilinear 2x upsampling (align_corners=False) as four 3x3 stencils per
    channel on the edge-replicated input, one per phase of the output: rows 2m take 0.25 x[m-1] +
    0.75 x[m], rows 2m+1 take 0.75 x[m] + 0.25 x[m+1] (and so do columns)."""
    rows = torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.75, 0.25]], dtype=dtype)
    return torch.einsum("ci,dj->cdij", rows, rows).reshape(4, 1, 3, 3).repeat(channels, 1, 1, 1)


class UpsampledConv2d(nn.Conv2d):
    """Bilinear 2x upsampling (align_corners=False) and then this convolution, as one layer.

    On a CPU it runs in the upsampled map's 2x2 phase space: the four phases of the upsampled input
    come from one fixed 3x3 stencil convolution of the input, the convolution becomes a 4 x c_in
    -> 4 x c_out one at the input's size (its kernel gathered from this layer's weight), and
    _interleave_phases interleaves the output's phases. The same function and the same parameters (a
    checkpoint's weight and bias as for nn.Conv2d), equal to float rounding: the texture decoder's
    last layer (8 -> 3 channels, 5x5, at 128x128) runs forward and backward in 49 ms at batch 32
    as upsampling and convolution, 41 ms this way (benchmarks/bench_train.py last-layer), since a
    convolution with 3 output channels at full size uses the CPU's vectors poorly. Elsewhere it
    upsamples and convolves. Needs an odd kernel, stride 1 and zero padding of kernel // 2."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        if kernel_size % 2 != 1:
            raise ValueError(f"UpsampledConv2d needs an odd kernel, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, 1, kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        c_out, c_in, k, _ = self.weight.shape
        index, pad = _phase_index(c_out, c_in, k)
        kernel = torch.cat([self.weight.flatten(), self.weight.new_zeros(1)])[index]
        phases = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), _phase_stencil(c_in, x.dtype), groups=c_in)
        bias = None if self.bias is None else self.bias.repeat(4)
        return _interleave_phases(F.conv2d(phases, kernel, bias, padding=pad), c_out)


class TextureDecoder(nn.Module):
    """[audio code, atlas code] -> lip atlas delta (B, 3, 128, 128) in [-1, 1] (Table 4)."""

    def __init__(self, dims: ModelDimensions):
        super().__init__()
        ch = dims.texture_channels
        self.start = ch[0]
        self.fc = nn.Sequential(nn.Linear(dims.audio_code + dims.atlas_code, 4 * 4 * ch[0]), nn.ReLU())
        blocks = []
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            blocks += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(c_in, c_out, 3, 1, 1), nn.ReLU()]
        # the last upsampling and convolution as one layer (the Identity keeps the checkpoint's names)
        blocks += [nn.Identity(), UpsampledConv2d(ch[-1], 3, 5), nn.Tanh()]
        self.convs = nn.Sequential(*blocks)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        x = self.fc(code).view(code.shape[0], self.start, 4, 4)          # (B, 1024, 4, 4)
        return self.convs(x)                                             # (B, 3, 128, 128)


class AtlasEncoder(nn.Module):
    """Previous lip atlas (B, 3, 128, 128) -> (B, N_a) in [-1, 1] (Table 5)."""

    def __init__(self, dims: ModelDimensions):
        super().__init__()
        layers, c_in = [], 3
        for c in dims.atlas_channels:
            layers += [nn.Conv2d(c_in, c, 5, 2, 2), nn.ReLU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(c_in * 4 * 4, dims.atlas_code), nn.Tanh())

    def forward(self, atlas: torch.Tensor) -> torch.Tensor:
        if atlas.shape[1:] != (3, LIP_SIZE, LIP_SIZE):
            raise ValueError(f"previous atlas must be (B, 3, {LIP_SIZE}, {LIP_SIZE}), got {tuple(atlas.shape)}")
        return self.fc(self.convs(atlas).flatten(1))


class LipSync3D(nn.Module):
    """The joint model of Figure 2: shared audio encoder, three decoders, optional AR encoder."""

    def __init__(self, dims: ModelDimensions):
        super().__init__()
        self.dims = dims
        self.audio = AudioEncoder(dims)
        self.geometry = GeometryDecoder(dims)
        self.texture = TextureDecoder(dims)
        self.blendshapes = nn.Linear(dims.audio_code, dims.n_blendshapes)
        self.atlas = AtlasEncoder(dims) if dims.atlas_code > 0 else None

    def forward(self, spectrogram: torch.Tensor, previous_atlas: torch.Tensor | None = None,
                phones: torch.Tensor | None = None, phone_keep: torch.Tensor | None = None,
                texture_dtype: torch.dtype | None = None, texture_detached: bool = False) -> dict:
        """Returns {"vertex_deltas" (B,468,3), "atlas_delta" (B,3,128,128), "blendshapes" (B,52)}.

        previous_atlas : (B, 3, 128, 128) in [-1, 1], or None for zeros (the first frame).
        phones : (B, phone_context) phone labels (a model with dims.phone_context > 0);
        phone_keep : see AudioEncoder.forward (training only).
        texture_dtype : autocast the atlas encoder and texture decoder alone to this dtype (training on
        a CPU with bf16 in hardware where its gradient misses the geometry: train.texture_autocast_dtype); the
        rest runs as the caller's.
        texture_detached : the texture path reads the audio code without passing its gradient back
        (TrainOptions.texture_shapes_code False).
        """
        code = self.audio(spectrogram, phones, phone_keep)               # (B, N_s)
        code_in = code.detach() if texture_detached else code
        # no context without a dtype: autocast(enabled=False) would switch off the caller's autocast
        with torch.autocast(code.device.type, dtype=texture_dtype) if texture_dtype is not None else nullcontext():
            if self.atlas is not None:
                if previous_atlas is None:
                    previous_atlas = spectrogram.new_zeros(len(code), 3, LIP_SIZE, LIP_SIZE)
                code_tex = torch.cat([code_in, self.atlas(previous_atlas)], dim=1)  # (B, N_s + N_a)
            else:
                code_tex = code_in
            atlas_delta = self.texture(code_tex)
        return {"vertex_deltas": self.geometry(code), "atlas_delta": atlas_delta,
                "blendshapes": self.blendshapes(code)}


def lips_to_uint8(lips: torch.Tensor) -> torch.Tensor:
    """(B, 3, 128, 128) in [-1, 1] -> (B, 128, 128, 3) uint8 on the same device (the inverse of
    training's x / 127.5 - 1)."""
    return ((lips.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


@torch.no_grad()
def autoregressive_lips(model: LipSync3D, codes: torch.Tensor, reference: torch.Tensor,
                        starts: np.ndarray | None = None, weight: np.ndarray | None = None,
                        previous: torch.Tensor | None = None,
                        on_step: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lip crops frame after frame, each frame's atlas encoder fed the previous frame's shown crop.

    codes : (N, N_s) audio codes (model.audio). reference : (1, 3, 128, 128) reference lips in
    [-1, 1]. starts : (S,) rows where a segment starts (default [0]); a segment runs to the next
    start, its first frame is fed zeros (or `previous`, with one segment), and all segments
    advance together, one batched step per frame. weight : (N,) in [0, 1] or None (all 1): shown
    = w lips + (1 - w) reference, and w = 0 shows the reference without running the decoder.
    previous : (1, 3, 128, 128) shown crop before row 0 (a stream predicted in chunks), or None.
    on_step(step, rows) after each step. A model without an atlas encoder runs in one batch.

    Returns (lips (N, 128, 128, 3) uint8 on codes' device, the last step's shown crops (B, 3, 128, 128)).
    """
    n = len(codes)
    starts = np.zeros(1, np.int64) if starts is None else np.asarray(starts, np.int64)
    weight = None if weight is None else np.asarray(weight, np.float32)
    if model.atlas is None or n == 0:                           # no feedback: one batch
        shown = (reference + model.texture(codes)).clamp(-1, 1)
        if weight is not None:
            w = torch.from_numpy(weight).to(codes.device)[:, None, None, None]
            shown = w * shown + (1 - w) * reference
        if on_step is not None and n:
            on_step(0, n)
        return lips_to_uint8(shown), (shown[-1:] if n else previous)
    make = torch.zeros if len(starts) == 0 or starts[0] != 0 else torch.empty
    out = make((n, LIP_SIZE, LIP_SIZE, 3), dtype=torch.uint8, device=codes.device)
    lengths = np.append(starts[1:], n) - starts
    single = len(starts) == 1
    shown, shown_alive = (previous if single else None), None
    for k in range(int(lengths.max()) if len(lengths) else 0):
        alive = k < lengths
        rows = slice(starts[0] + k, starts[0] + k + 1) if single else starts[alive] + k
        m = 1 if single else len(rows)
        w = None if weight is None else weight[rows]
        if w is not None and not w.any():                       # silence: the reference, no decoder
            shown = reference.expand(m, -1, -1, -1)
        else:
            if shown is None:
                prev = torch.zeros((m, *reference.shape[1:]), dtype=reference.dtype, device=reference.device)
            else:
                prev = shown if single else shown[torch.from_numpy(alive[shown_alive])]
            index = rows if single else torch.from_numpy(rows)
            tex = model.texture(torch.cat([codes[index], model.atlas(prev)], dim=1))
            shown = (reference + tex).clamp(-1, 1)
            if w is not None and (w != 1).any():
                wt = torch.from_numpy(w).to(codes.device)[:, None, None, None]
                shown = wt * shown + (1 - wt) * reference
        out[rows if single else torch.from_numpy(rows)] = lips_to_uint8(shown)
        shown_alive = alive
        if on_step is not None:
            on_step(k, m)
    return out, shown
