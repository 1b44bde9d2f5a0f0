#!/usr/bin/env python
"""Build the shipped sample, data/sample/<category>/*.png, from the openclipart-png package.

    python scripts/build_sample.py                      # rebuild data/sample
    python scripts/build_sample.py --check              # ... and report K-means ARI (lite0)
    python scripts/build_sample.py --out /tmp/s --categories fruit=food/fruit birds=animals/birds

The source is Debian's openclipart-png (public domain; see data/sample/PROVENANCE.md for why
not tuxpaint-stamps). Fetch it with:
    /work/shared/data/fetch-debian-images.sh openclipart-png /work/data/openclipart

The build is deterministic: within a category, images are taken in order of their content
hash (a fixed pseudo-random order that does not depend on file names or disk order), each
decoded with rayclust's own robust decoder (transparency on white), shrunk to at most
--max-side pixels and stored as an adaptive-palette PNG.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from rayclust.images import ImageDecodeError, ImageSet, content_id, decode_image  # noqa: E402

PACKAGE = "openclipart-png"
PACKAGE_VERSION = "1:0.18+dfsg-19"
DEFAULT_SOURCE = Path("/work/data/openclipart")
# sample name -> folder in the package. Chosen among 25 candidate folders of >= 24 images
# for K-means ARI on efficientnet_lite0 features (see --check), preferring real objects over
# near-identical synthetic shapes (jigsaw pieces, stick men), which would score higher still,
# and over signs_and_symbols/clocks, whose 24 files are half one clock at different times.
DEFAULT_CATEGORIES = {
    "computers": "computer/hardware",
    "flowers": "plants/flowers",
    "mammals": "animals/mammals",
    "road_signs": "transportation/roadsigns",
    "smileys": "people/smilies",
}
MIN_SIDE = 48  # smaller originals are icons, too small to say what they show
MIN_CONTRAST = 12.0  # grey-level std below this: a near-blank image


@dataclass(frozen=True)
class SampleImage:
    category: str
    source: str  # path relative to the package root
    output: str  # path relative to the sample root
    size: tuple[int, int]


def shrink(path: str, max_side: int) -> Image.Image | None:
    """The image on white, at most max_side pixels, or None when it is unusable."""
    try:
        img = decode_image(path, target_size=max_side)
    except ImageDecodeError:
        return None
    if min(img.size) < MIN_SIDE:
        return None
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if float(np.asarray(img.convert("L"), dtype=np.float32).std()) < MIN_CONTRAST:
        return None
    return img


def encode_png(img: Image.Image) -> bytes:
    # Clip art has few colours: an adaptive 256-colour palette is visually lossless and
    # 3-4x smaller than RGB.
    buffer = io.BytesIO()
    img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        buffer, format="PNG", optimize=True
    )
    return buffer.getvalue()


def build(
    source: Path, out: Path, categories: dict[str, str], per_category: int, max_side: int
) -> list[SampleImage]:
    chosen: list[SampleImage] = []
    seen_content: set[str] = set()
    if out.exists():
        shutil.rmtree(out)
    for name, folder in sorted(categories.items()):
        found = ImageSet.from_folder(source / folder, progress=False)
        (out / name).mkdir(parents=True)
        taken = 0
        for record in sorted(found.records, key=lambda r: r.image_id):
            if taken == per_category:
                break
            if record.image_id in seen_content:  # the same file filed twice
                continue
            img = shrink(record.path, max_side)
            if img is None:
                continue
            encoded = encode_png(img)
            # Two originals that differ only below the output size (re-saves, metadata)
            # would become one image twice.
            if content_id(encoded) in seen_content:
                continue
            seen_content.update((record.image_id, content_id(encoded)))
            target = out / name / (Path(record.path).stem + ".png")
            suffix = 1
            while target.exists():  # same stem in two sub-folders
                suffix += 1
                target = out / name / f"{Path(record.path).stem}_{suffix}.png"
            target.write_bytes(encoded)
            relative = Path(record.path).relative_to(source).as_posix()
            chosen.append(SampleImage(name, relative, target.relative_to(out).as_posix(), img.size))
            taken += 1
        if taken < per_category:
            raise SystemExit(f"category {name}: found {taken} usable images < {per_category}")
    return chosen


def check_ari(sample: Path, seeds: int = 10) -> tuple[float, float]:
    """Mean and SD of K-means ARI over seeds, on efficientnet_lite0 features of the sample."""
    import torch
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from rayclust.views import build_view

    image_set = ImageSet.from_folder(sample, labels_from_folders=True, progress=False)
    view = build_view("efficientnet_lite0")
    features = []
    with torch.inference_mode():
        for start in range(0, len(image_set), 32):
            batch = [
                view.transform(decode_image(r.path)) for r in image_set.records[start : start + 32]
            ]
            features.append(view.model(torch.stack(batch)).numpy())
    x = np.concatenate(features)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = image_set.label_codes()
    k = len(image_set.label_names)
    scores = [
        adjusted_rand_score(labels, KMeans(k, n_init=10, random_state=seed).fit_predict(x))
        for seed in range(seeds)
    ]
    return float(np.mean(scores)), float(np.std(scores))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "sample")
    parser.add_argument(
        "--categories",
        nargs="+",
        metavar="NAME=FOLDER",
        help="sample categories and their package folders (default: the shipped five)",
    )
    parser.add_argument("--per-category", type=int, default=24)
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--check", action="store_true", help="report K-means ARI on lite0")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        raise SystemExit(
            f"source {args.source} is missing; fetch it with"
            f" /work/shared/data/fetch-debian-images.sh {PACKAGE} {args.source}"
        )
    categories = (
        dict(item.split("=", 1) for item in args.categories)
        if args.categories
        else DEFAULT_CATEGORIES
    )
    chosen = build(args.source, args.out, categories, args.per_category, args.max_side)
    total = sum(f.stat().st_size for f in args.out.rglob("*.png"))
    print(f"wrote {len(chosen)} images in {len(categories)} categories, {total / 1e6:.2f} MB")
    if total > 10e6:
        raise SystemExit(f"sample is {total / 1e6:.1f} MB > the 10 MB limit")
    ari = None
    if args.check:
        ari = check_ari(args.out)
        print(f"efficientnet_lite0 + K-means ARI over 10 seeds: {ari[0]:.3f} (SD {ari[1]:.3f})")
    write_provenance(args.out, categories, chosen, total, args.max_side, ari)


PROVENANCE_TEMPLATE = """\
# Provenance of the shipped sample

{n_images} images in {n_categories} categories, {megabytes} MB, built by `scripts/build_sample.py`.
Generated file: edit the script, not this page.

## Source

Debian package `{package}`, version `{version}` (upstream: the Open Clip Art Library,
openclipart.org, release 0.18), as unpacked by
`/work/shared/data/fetch-debian-images.sh {package} /work/data/openclipart`.

| sample category | package folder (recursive) | images |
|---|---|---|
{category_rows}

## Licence: public domain

Every image in `{package}` is in the public domain. The package's
`/usr/share/doc/{package}/copyright` states:

> Copyright: creative commons Public Domain Dedication. Copyright-Only Dedication (based on
> United States law) or Public Domain Certification. [...] the Work may be freely
> reproduced, distributed, transmitted, used, modified, built upon, or otherwise exploited
> by anyone for any purpose, commercial or non-commercial, and in any way.

So the downscaled copies here may be redistributed with this repository (Apache-2.0) without
conditions. Upstream, each image came with a text file naming its author; most file names
still carry the author's name.

### Why not tuxpaint-stamps-default

The Debian copyright of `tuxpaint-stamps-default` (2022.06.04-1) licenses all files under
GPL-2+, and upstream's CONTRIBUTORS.txt credits individual stamps under GFDL, CC-BY-SA
2.0/2.5/3.0, CC-BY 2.0/2.5, GPL and public domain. Shipping modified (downscaled) copies
would carry copyleft and per-image attribution duties, and the stamps credited as public
domain are mostly SVG files that are not among the 796 PNGs. None are used here.

## Processing

Within a category, images are taken in order of their content hash (blake2b-128 of the
file), a fixed order independent of names and disk layout; files whose content (original or
shrunk) already appeared, that do not decode, are under {min_side} px or are nearly blank
are passed over.
Each is decoded with `rayclust.images.decode_image` (transparency composited on white),
shrunk to at most {max_side} px (Lanczos) and saved as a 256-colour adaptive-palette PNG.
{ari_line}
## Rebuild

```
/work/shared/data/fetch-debian-images.sh {package} /work/data/openclipart   # if absent
.venv/bin/python scripts/build_sample.py --check
```

## Files (sample path <- package path)

{files}
"""


def write_provenance(
    out: Path,
    categories: dict[str, str],
    chosen: list[SampleImage],
    total: int,
    max_side: int,
    ari: tuple[float, float] | None,
) -> None:
    rows = []
    for name, folder in sorted(categories.items()):
        count = sum(1 for c in chosen if c.category == name)
        rows.append(f"| {name} | `{folder}` | {count} |")
    ari_line = (
        f"\nMeasured separability: K-means (k={len(categories)}) on L2-normalised"
        f" efficientnet_lite0 features gives ARI {ari[0]:.3f} (SD {ari[1]:.3f}) over 10 seeds.\n"
        if ari
        else ""
    )
    text = PROVENANCE_TEMPLATE.format(
        package=PACKAGE,
        version=PACKAGE_VERSION,
        n_images=len(chosen),
        n_categories=len(categories),
        megabytes=f"{total / 1e6:.2f}",
        category_rows="\n".join(rows),
        min_side=MIN_SIDE,
        max_side=max_side,
        ari_line=ari_line,
        files="\n".join(f"- `{c.output}` <- `{c.source}`" for c in chosen),
    )
    (out / "PROVENANCE.md").write_text(text)


if __name__ == "__main__":
    main()
