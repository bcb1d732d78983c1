"""Plots of `lipsync evaluate` (evaluate.py): mouth-openness curves and sample lip atlases.

Owns: drawing. Must not: compute metrics or predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core import storage
from ..face.geometry import LIP_SIZE
from ..prepare.normalize import mouth_openness

COLORS = {"truth": "black", "model": "tab:red", "static": "tab:gray", "envelope": "tab:blue", "retrieval": "tab:green"}


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with storage.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)


def plot_openness(path: Path, truth: np.ndarray, preds: dict, fps: float, metrics: dict) -> None:
    """Mouth openness over the held-out frames: ground truth and every method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(truth)) / fps
    fig, ax = plt.subplots(figsize=(min(16, 4 + len(t) / 40), 3.6))
    ax.plot(t, truth, color=COLORS["truth"], lw=2.2, label="ground truth")
    for name, p in preds.items():
        ax.plot(t, mouth_openness(p.vertices), color=COLORS[name], lw=1.1,
                label=f"{name} (r = {metrics[name]['openness_r']:.2f})")
    ax.set_xlabel("held-out time (s, segments joined)")
    ax.set_ylabel("mouth openness (lip gap / face height)")
    ax.legend(loc="upper right", fontsize=8, ncol=3)
    _save(fig, path)


def plot_atlases(path: Path, truth_atlas, preds: dict, ref_atlas: np.ndarray, lip_box: dict,
                 rows: np.ndarray, labels: list[str]) -> None:
    """Lip region of sample held-out frames: ground truth, then every method, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r, c = lip_box["row"], lip_box["col"]
    cols = ["truth", *preds]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.9 * len(cols), 1.9 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        full = [truth_atlas(row, row + 1)[0]] + [_compose(ref_atlas, p.lips[row:row + 1], lip_box)[0]
                                                for p in preds.values()]
        for j, img in enumerate(full):
            ax = axes[i, j]
            ax.imshow(img[max(0, r - 32):r + LIP_SIZE + 16, max(0, c - 16):c + LIP_SIZE + 16])
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(labels[i], fontsize=8)
    _save(fig, path)


def _compose(reference_atlas: np.ndarray, lips: np.ndarray, lip_box: dict) -> np.ndarray:
    from ..inference.render import compose_atlas

    return compose_atlas(reference_atlas, lips, lip_box)
