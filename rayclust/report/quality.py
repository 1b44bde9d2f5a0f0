"""Image quality figures, as fastdup shows them: size, blur (variance of the Laplacian) and
brightness, with the extremes of each listed.

Measured on a copy decoded at ``QUALITY_PX`` on its shorter side, so the blur figure of a
40 MP photo and of a 300 px drawing are comparable (and a big file costs a reduced decode).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUALITY_PX = 256
MAX_QUALITY_IMAGES = 1000  # images measured, spread over the clusters, on larger runs
N_EXTREMES = 6  # images listed at each end of each figure


@dataclass
class Quality:
    width: int  # of the file, in pixels
    height: int
    blur: float  # variance of the Laplacian of the grey image: low is blurry / flat
    brightness: float  # mean grey level, 0 (black) to 1 (white)


def measure(img, size: tuple[int, int]) -> Quality:
    """The figures of one decoded RGB image whose file is ``size`` (width, height)."""
    scale = QUALITY_PX / max(min(img.size), 1)
    if scale < 1:
        img = img.resize((max(round(img.width * scale), 1), max(round(img.height * scale), 1)))
    grey = np.asarray(img.convert("L"), dtype=np.float64)
    if min(grey.shape) < 3:
        laplacian = np.zeros(1)
    else:
        laplacian = (
            grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]
            - 4 * grey[1:-1, 1:-1]
        )  # fmt: skip
    return Quality(int(size[0]), int(size[1]), float(laplacian.var()), float(grey.mean() / 255))


@dataclass
class QualityFigure:
    """One figure over the measured images: its histogram and the rows at each end."""

    name: str
    low_name: str
    high_name: str
    values: np.ndarray
    counts: np.ndarray  # histogram
    edges: np.ndarray
    low: list[int]  # indices into the measured rows, lowest first
    high: list[int]  # highest first


def figures(measured: list[Quality], log_blur: bool = True) -> list[QualityFigure]:
    """Size (megapixels), blur and brightness of the measured images."""
    if not measured:
        return []
    columns = {
        ("size (megapixels)", "smallest", "largest"): [q.width * q.height / 1e6 for q in measured],
        ("blur (variance of the Laplacian)", "blurriest", "sharpest"): [q.blur for q in measured],
        ("brightness", "darkest", "brightest"): [q.brightness for q in measured],
    }
    out = []
    for (name, low_name, high_name), values in columns.items():
        v = np.asarray(values, dtype=float)
        shown = np.log10(v + 1) if (log_blur and name.startswith("blur")) else v
        counts, edges = np.histogram(shown, bins=20)
        order = np.argsort(v, kind="stable")
        n = min(N_EXTREMES, len(v) // 2 or 1)
        out.append(
            QualityFigure(
                name,
                low_name,
                high_name,
                v,
                counts,
                edges,
                order[:n].tolist(),
                order[::-1][:n].tolist(),
            )  # fmt: skip
        )
    return out
