"""The network's audio path in numpy: the audio encoder and the geometry and blendshape decoders.

Meshes and coefficients need only these three parts of the network, and they are small
convolutions and matrix products. Run here they need no torch, whose import alone (1.3 s on
this machine) takes longer than predicting a whole 3 s line (docs/benchmarks.md, "Predicting
one line"). The weights are network.LipSync3D's (model.safetensors read as numpy arrays),
and the outputs equal the torch modules' in eval mode to float32 rounding
(tests/engine/test_model.py). The texture decoder and the atlas encoder stay in torch.
Must not: import torch, train, or read files.

Layout: channels last, (B, F, T, C). A convolution is one matrix product of its gathered
kernel taps: (B F' T', k C) @ (k C, C'), the taps k-major as in the weight table below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dims import LEAKY_SLOPE, N_COLUMNS, N_FREQ, ModelDimensions

BATCH = 32          # frames per pass: bounds the gathered taps (about 30 MB at the paper width)
KERNEL, STRIDE = 3, 2   # every audio convolution: 3 taps, stride 2, padding 1 along its axis


@dataclass(frozen=True)
class Conv:
    """One audio convolution, channels last."""

    weight: np.ndarray   # (3 C_in, C_out) float32: row k C_in + c is tap k of input channel c
    bias: np.ndarray     # (C_out,) float32
    axis: int            # 1: along frequency (kernel 3x1), 2: along time (kernel 1x3)


@dataclass(frozen=True)
class Linear:
    weight: np.ndarray   # (in, out) float32 (torch's weight transposed)
    bias: np.ndarray     # (out,) float32

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight + self.bias


@dataclass(frozen=True)
class AudioHeads:
    """Spectrograms -> audio codes -> vertex deltas and blendshape coefficients, in numpy.

    >>> import numpy as np
    >>> from lipsync_engine.model.dims import ModelDimensions
    >>> dims = ModelDimensions().scaled(1 / 32)
    >>> heads = AudioHeads.from_tensors(random_tensors(dims), dims)
    >>> codes = heads.codes(np.zeros((2, 256, 24, 2), np.float32))
    >>> codes.shape, heads.geometry(codes).shape, heads.blendshapes(codes).shape
    ((2, 32), (2, 468, 3), (2, 52))
    """

    convs: tuple[Conv, ...]      # 6 along frequency, then 6 along time, each followed by a leaky ReLU
    fc: Linear                   # (C 4, N_s): input in channels-last order (f C + c)
    geometry_hidden: Linear      # (N_s, H)
    geometry_out: Linear         # (H, 3 V)
    blend: Linear                # (N_s, 52)
    phones: Linear | None = None  # (phone_context n_phones, N_s): the one-hot phone context, added to the code
    n_phones: int = 0

    @classmethod
    def from_tensors(cls, tensors: dict, dims: ModelDimensions) -> "AudioHeads":
        """From a model's weights ({"model.audio.convs.0.weight": array, ...}); ValueError naming
        the weight that is missing or has the wrong shape for `dims`."""
        def get(name: str, shape: tuple) -> np.ndarray:
            key = f"model.{name}"
            if key not in tensors:
                raise ValueError(f"the weight {key} is missing")
            a = np.asarray(tensors[key], np.float32)
            if a.shape != shape:
                raise ValueError(f"{key} is {a.shape}, the network in the config needs {shape}")
            return a

        convs, c_in = [], 2
        channels = [(c, 1) for c in dims.freq_channels] + [(c, 2) for c in dims.time_channels]
        for i, (c, axis) in enumerate(channels):
            shape = (c, c_in, KERNEL, 1) if axis == 1 else (c, c_in, 1, KERNEL)
            w = get(f"audio.convs.{2 * i}.weight", shape).reshape(c, c_in, KERNEL)   # (C_out, C_in, k)
            convs.append(Conv(np.ascontiguousarray(w.transpose(2, 1, 0).reshape(KERNEL * c_in, c)),
                              get(f"audio.convs.{2 * i}.bias", (c,)), axis))
            c_in = c
        freq = N_FREQ // STRIDE ** len(dims.freq_channels)                       # 256 -> 4
        fc = get("audio.fc.weight", (dims.audio_code, c_in * freq))             # torch order c freq + f
        fc = fc.reshape(dims.audio_code, c_in, freq).transpose(2, 1, 0).reshape(freq * c_in, dims.audio_code)
        n_out = dims.n_vertices * 3
        phones = _linear(get, "audio.phones", dims.phone_inputs, dims.audio_code) if dims.phone_inputs else None
        return cls(tuple(convs), Linear(np.ascontiguousarray(fc), get("audio.fc.bias", (dims.audio_code,))),
                   _linear(get, "geometry.hidden", dims.audio_code, dims.geometry_hidden),
                   _linear(get, "geometry.out", dims.geometry_hidden, n_out),
                   _linear(get, "blendshapes", dims.audio_code, dims.n_blendshapes), phones, dims.n_phones)

    def codes(self, spectrogram: np.ndarray, phones: np.ndarray | None = None) -> np.ndarray:
        """(B, 256, 24, 2) float32 spectrograms (already x the model's spectrogram scale) -> (B, N_s)
        float32 audio codes, BATCH frames at a time. phones : (B, phone_context) labels, for a
        model that reads them (the sum of the one-hot rows of the phone weight, added)."""
        if spectrogram.shape[1:] != (N_FREQ, N_COLUMNS, 2):
            raise ValueError(f"spectrogram must be (B, {N_FREQ}, {N_COLUMNS}, 2), got {spectrogram.shape}")
        out = [self._encode(np.asarray(spectrogram[i:i + BATCH], np.float32))
               for i in range(0, len(spectrogram), BATCH)]
        codes = np.concatenate(out) if out else np.zeros((0, self.fc.bias.shape[0]), np.float32)
        if self.phones is None:
            return codes
        if phones is None or len(phones) != len(codes):
            raise ValueError("this model reads phone labels with its spectrograms, one row per frame")
        rows = np.asarray(phones, np.int64) + self.n_phones * np.arange(phones.shape[1])   # one-hot columns
        return codes + self.phones.weight[rows].sum(1) + self.phones.bias

    def _encode(self, x: np.ndarray) -> np.ndarray:
        for conv in self.convs:
            x = _conv(x, conv)
            x = np.maximum(x, LEAKY_SLOPE * x)                                   # leaky ReLU
        return self.fc(x.reshape(len(x), -1))                                    # (B, 4, 1, C) -> (B, N_s)

    def geometry(self, codes: np.ndarray) -> np.ndarray:
        """(B, N_s) -> (B, 468, 3) float32 vertex deltas (dropout is off at inference)."""
        return self.geometry_out(self.geometry_hidden(codes)).reshape(len(codes), -1, 3)

    def blendshapes(self, codes: np.ndarray) -> np.ndarray:
        """(B, N_s) -> (B, 52) float32 raw blendshape coefficients (not clipped)."""
        return self.blend(codes)


def _linear(get, name: str, n_in: int, n_out: int) -> Linear:
    return Linear(np.ascontiguousarray(get(f"{name}.weight", (n_out, n_in)).T), get(f"{name}.bias", (n_out,)))


def _conv(x: np.ndarray, conv: Conv) -> np.ndarray:
    """(B, F, T, C) -> (B, F', T', C_out): 3 taps, stride 2, zero padding 1 along conv.axis."""
    n = x.shape[conv.axis]
    n_out = (n + 2 - KERNEL) // STRIDE + 1
    pad = [(0, 0)] * 4
    pad[conv.axis] = (1, 1)
    xp = np.pad(x, pad)
    index = [slice(None)] * 4
    taps = []
    for k in range(KERNEL):
        index[conv.axis] = slice(k, k + STRIDE * (n_out - 1) + 1, STRIDE)
        taps.append(xp[tuple(index)])
    cols = np.concatenate(taps, axis=-1)                                         # (B, F', T', 3 C)
    y = cols.reshape(-1, cols.shape[-1]) @ conv.weight + conv.bias
    return y.reshape(*cols.shape[:-1], -1)


def random_tensors(dims: ModelDimensions, seed: int = 0) -> dict:
    """Weights of the audio path with the network's names and shapes, random (tests and doctests)."""
    rng = np.random.default_rng(seed)
    out, c_in = {}, 2
    for i, c in enumerate(dims.freq_channels + dims.time_channels):
        shape = (c, c_in, KERNEL, 1) if i < len(dims.freq_channels) else (c, c_in, 1, KERNEL)
        out[f"model.audio.convs.{2 * i}.weight"] = rng.normal(0, 0.3, shape).astype(np.float32)
        out[f"model.audio.convs.{2 * i}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
        c_in = c
    freq = N_FREQ // STRIDE ** len(dims.freq_channels)
    for name, n_in, n_out in (("audio.fc", c_in * freq, dims.audio_code),
                              ("geometry.hidden", dims.audio_code, dims.geometry_hidden),
                              ("geometry.out", dims.geometry_hidden, dims.n_vertices * 3),
                              ("blendshapes", dims.audio_code, dims.n_blendshapes),
                              *((("audio.phones", dims.phone_inputs, dims.audio_code),) if dims.phone_inputs else ())):
        out[f"model.{name}.weight"] = rng.normal(0, 0.3, (n_out, n_in)).astype(np.float32)
        out[f"model.{name}.bias"] = rng.normal(0, 0.1, n_out).astype(np.float32)
    return out
