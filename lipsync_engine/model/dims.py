"""The network's dimensions without torch: ModelDimensions (stored in every checkpoint), the
width presets and the shape constants. network.py builds the torch modules from them and
numpy_heads.py runs the audio path in numpy; a model folder's config is read with this
module alone (importing torch costs more than a whole short prediction).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

N_FREQ, N_COLUMNS = 256, 24   # spectrogram frequencies x columns per frame (audio.py)
N_VERTICES = 468
N_BLENDSHAPES = 52
N_PHONES, PHONE_CONTEXT = 42, 13   # prepare/phones.py: PHONES, CONTEXT_MS
LEAKY_SLOPE = 0.2             # leaky ReLU slope of the audio encoder


@dataclass(frozen=True)
class ModelDimensions:
    """Everything needed to rebuild the network; saved in every checkpoint."""

    audio_code: int = 32                                        # N_s (paper, Appendix F.2)
    atlas_code: int = 2                                         # N_a (paper, Appendix F.1); 0 = no AR
    freq_channels: tuple[int, ...] = (72, 108, 162, 243, 256, 256)   # 6 convs 3x1 stride 2x1
    time_channels: tuple[int, ...] = (256, 256, 256, 256, 256, 256)  # 6 convs 1x3 stride 1x2
    geometry_hidden: int = 150                                  # FC 150, dropout, FC 1404
    geometry_dropout: float = 0.2
    texture_channels: tuple[int, ...] = (1024, 512, 256, 128, 64)   # Table 4 (4x4x1024 start)
    atlas_channels: tuple[int, ...] = (128, 256, 512, 1024, 2048)   # Table 5
    n_vertices: int = N_VERTICES
    n_blendshapes: int = N_BLENDSHAPES
    phone_context: int = 0          # beyond the paper: phone labels per frame added into the audio code (0 = none)
    n_phones: int = 0               # ... out of this many phones (prepare/phones.py)

    def __post_init__(self) -> None:
        if len(self.freq_channels) != 6 or len(self.time_channels) != 6:
            raise ValueError("the audio encoder has 6 frequency and 6 time convolutions")
        if len(self.texture_channels) != 5 or len(self.atlas_channels) != 5:
            raise ValueError("texture decoder and atlas encoder have 5 convolution stages (Tables 4, 5)")
        if (self.phone_context > 0) != (self.n_phones > 0):
            raise ValueError("phone_context and n_phones are both 0 (no phone input) or both positive")

    @property
    def phone_inputs(self) -> int:
        """Width of the one-hot phone context (0: the model hears the spectrogram only)."""
        return self.phone_context * self.n_phones

    def with_phones(self) -> "ModelDimensions":
        return replace(self, phone_context=PHONE_CONTEXT, n_phones=N_PHONES)

    def scaled(self, width: float) -> "ModelDimensions":
        """The same network with every convolution's channels multiplied by `width`."""
        def s(ch):
            return tuple(max(4, int(round(c * width))) for c in ch)
        return replace(self, freq_channels=s(self.freq_channels), time_channels=s(self.time_channels),
                       texture_channels=s(self.texture_channels), atlas_channels=s(self.atlas_channels))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelDimensions":
        d = dict(d)
        for k in ("freq_channels", "time_channels", "texture_channels", "atlas_channels"):
            d[k] = tuple(d[k])
        return cls(**d)


PRESETS = {"paper": 1.0, "cpu": 0.125}  # cpu: 0.2 s per 32-frame step here (benchmarks/bench_model.py)


def preset_dimensions(name: str) -> ModelDimensions:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return ModelDimensions().scaled(PRESETS[name])
