#!/usr/bin/env python
"""Write scikit-learn's bundled digits (1,797 8x8 grey images) as PNG files DIR/<digit>/*.png.

    python scripts/render_digits.py /tmp/digits                  # all 1,797, 64x64 RGB
    python scripts/render_digits.py /tmp/digits --per-class 60   # 600 images, 60 per digit
    python -m rayclust run experiments/digits.yaml input.source=/tmp/digits

The digits ship inside scikit-learn (``load_digits``), so this needs no network. They make a
collection where ImageNet features are weak and raw pixels are strong, which is what a
multi-view ensemble has to cope with. Each image is drawn dark ink on white (the 0..16
intensities scaled to 255..0), upscaled smoothly to ``--size`` pixels and saved as RGB, so
every view sees an ordinary photo-like file. Files are named by their index in
``load_digits`` (``3/0003.png``); the output is the same on every run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
MAX_INTENSITY = 16  # load_digits().images hold integers 0..16


def digit_image(pixels: np.ndarray, size: int, resample: str = "bilinear") -> Image.Image:
    """One 8x8 digit (values 0..16) as a ``size`` x ``size`` RGB image, dark ink on white."""
    if pixels.shape != (8, 8):
        raise ValueError(f"pixels.shape={pixels.shape} should be (8, 8)")
    grey = np.clip(255.0 - pixels * (255.0 / MAX_INTENSITY), 0, 255).round().astype(np.uint8)
    image = Image.fromarray(grey, mode="L").resize((size, size), RESAMPLING[resample])
    return image.convert("RGB")


def select_indices(targets: np.ndarray, per_class: int | None) -> np.ndarray:
    """Indices of the first ``per_class`` images of every digit (all when None), in order."""
    if per_class is None:
        return np.arange(targets.shape[0])
    if per_class < 1:
        raise ValueError(f"per_class={per_class} should be >= 1")
    chosen = [np.flatnonzero(targets == digit)[:per_class] for digit in np.unique(targets)]
    return np.sort(np.concatenate(chosen))


def render_digits(
    out_dir: str | Path, size: int = 64, per_class: int | None = None, resample: str = "bilinear"
) -> list[Path]:
    """Write the digits as ``out_dir/<digit>/<index>.png``; returns the paths written."""
    from sklearn.datasets import load_digits

    if size < 8:
        raise ValueError(f"size={size} should be >= 8 (the digits are 8x8)")
    if resample not in RESAMPLING:
        raise ValueError(f"resample={resample!r} is not one of {', '.join(RESAMPLING)}")
    digits = load_digits()
    out_dir = Path(out_dir)
    paths = []
    for index in select_indices(digits.target, per_class):
        folder = out_dir / str(int(digits.target[index]))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index:04d}.png"
        digit_image(digits.images[index], size, resample).save(path, optimize=True)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write <digit>/<index>.png into")
    parser.add_argument("--size", type=int, default=64, help="side in pixels (default 64)")
    parser.add_argument(
        "--per-class", type=int, default=None, help="first N images of each digit (default: all)"
    )
    parser.add_argument("--resample", choices=sorted(RESAMPLING), default="bilinear")
    args = parser.parse_args(argv)
    paths = render_digits(args.out_dir, args.size, args.per_class, args.resample)
    print(f"wrote {len(paths)} images to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
