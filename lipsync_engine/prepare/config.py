"""Frozen option dataclasses for every stage. Validation happens once, in __post_init__.

Override with dataclasses.replace(options, field=value); every option set is written
into the outputs it produced (meta.json), so a result says how it was made.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LightingOptions:
    patch_size: int = 16            # side of the square patch p_k of Eq. (1), atlas pixels (paper: 16 for 256x256)
    temperature: float = 0.1        # T of Eq. (2) (paper: 0.1)
    iterations: int = 8             # IRLS iterations (paper: 5-10)
    specular_percentile: float = 90.0  # specularity mask threshold, percentile of skin min-RGB (paper: 90th)
    specular_smooth_sigma: float = 1.5  # Gaussian sigma (atlas pixels) of the smoothed image used for the mask
    remove_specularities: bool = True  # Section 3.1.2 "Specularity Removal"
    symmetrize_reference: bool = True  # Section 3.1.2 "Reference Atlas Normalization using Facial Symmetry"
    register_skin: bool = True      # beyond the paper: optical flow aligns skin texture to the reference (normalize.py)
    normalize: bool = True          # Section 3.1.2 gain + colour normalization (False: raw atlases, for the ablation)

    def __post_init__(self) -> None:
        if self.patch_size < 2:
            raise ValueError(f"patch_size must be >= 2, got {self.patch_size}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 1 <= self.iterations <= 50:
            raise ValueError(f"iterations must be in 1..50, got {self.iterations}")
        if not 50.0 <= self.specular_percentile < 100.0:
            raise ValueError(f"specular_percentile must be in [50, 100), got {self.specular_percentile}")
