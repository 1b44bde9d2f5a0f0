#!/usr/bin/env python
"""Build the labelled collections of the quality study (issue 17) under a folder in /tmp.

    python experiments/quality_data.py /tmp/wt17/sets [--raw /tmp/wt17/raw]

Nothing big is committed: the raw Debian packages are fetched with
``/work/shared/data/fetch-debian-images.sh`` (apt, no other network) into ``--raw`` and each
collection is written as ``<out>/<name>/<class>/<file>.png``, images shrunk to at most 256 px
(openclipart holds images over 100 MP). Class lists are fixed here, chosen by size only
(every class with enough images, capped so no class dominates), never by clustering results.

| name | source | classes | images |
|---|---|---|---|
| sample | data/sample (openclipart: computers, flowers, mammals, road signs, smileys) | 5 | 120 |
| tuxpaint | tuxpaint-stamps-default, the 8 categories with >= 30 stamps, <= 100 each | 8 | ~560 |
| openclipart | openclipart-png, 10 sub-categories not in data/sample, <= 80 each | 10 | ~530 |
| digits | scikit-learn digits rendered 64x64 (scripts/render_digits.py), 100 per digit | 10 | 1000 |
| icons | gnome-icon-theme 48x48 context folders with >= 18 icons | 9 | ~370 |
| openclipart_top | openclipart-png top-level folders, minus every sub-folder above, <= 60 each | 10 | ~600 |
| oxygen | oxygen-icon-theme 48x48 context folders with >= 18 icons, <= 80 each | 7 | ~480 |

Development (choosing the method) used sample, tuxpaint and digits; openclipart and icons were
kept for confirmation, openclipart_top was added and run once after the method was fixed (see experiments/README.md, "Quality without labels"). oxygen (a second icon theme, a
package not used before) was added after the second round of method changes and run once.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FETCH = Path("/work/shared/data/fetch-debian-images.sh")
MAX_SIDE = 256
RASTER = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp"}

TUXPAINT = ["animals", "food", "household", "plants", "seasonal", "symbols", "town", "vehicles"]
OPENCLIPART = {
    "fruit": "food/fruit",
    "desserts": "food/desserts",
    "beverages": "food/beverages",
    "music": "recreation/music",
    "sports": "recreation/sports",
    "clothing": "people/clothing",
    "birds": "animals/birds",
    "bugs": "animals/bugs",
    "boating": "transportation/boating",
    "weapons": "tools/weapons",
}
# Coarse openclipart categories (top-level folders), leaving out every sub-folder used above
# or in data/sample: a sixth collection, added after the method was fixed and run once.
OPENCLIPART_TOP = ["animals", "buildings", "food", "geography", "office", "people", "plants",
                   "recreation", "tools", "transportation"]  # fmt: skip
OPENCLIPART_USED = set(OPENCLIPART.values()) | {
    "computer/hardware", "plants/flowers", "animals/mammals", "transportation/roadsigns",
    "people/smilies",
}  # fmt: skip
ICONS = ["actions", "apps", "categories", "devices", "emblems", "emotes", "mimetypes",
         "places", "status"]  # fmt: skip
# oxygen-icon-theme 48x48: the same rule as ICONS (context folders of >= 18 icons; animations,
# emblems and emotes have fewer), capped so actions (613) does not dominate.
OXYGEN = ["actions", "apps", "categories", "devices", "mimetypes", "places", "status"]


ALL = ["sample", "tuxpaint", "openclipart", "openclipart_top", "digits", "icons", "oxygen"]


def fetch(package: str, dest: Path) -> Path:
    if not dest.exists() or not any(dest.rglob("*")):
        subprocess.run(["bash", str(FETCH), package, str(dest)], check=True)
    return dest


def images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in RASTER and p.is_file())


def copy_class(files: list[Path], dest: Path, cap: int | None, seed: int = 0) -> int:
    """Shrunk copies of (a seeded sample of at most ``cap`` of) ``files`` into ``dest``."""
    files = list(files)
    if cap is not None and len(files) > cap:
        files = sorted(random.Random(seed).sample(files, cap))
    dest.mkdir(parents=True, exist_ok=True)
    Image.MAX_IMAGE_PIXELS = None  # trusted package files; shrunk right away
    written = 0
    for i, path in enumerate(files):
        try:
            with Image.open(path) as image:
                image.draft("RGB", (MAX_SIDE, MAX_SIDE))
                image.thumbnail((MAX_SIDE, MAX_SIDE))
                if image.mode not in ("RGB", "RGBA", "L", "LA"):
                    image = image.convert("RGBA")
                image.save(dest / f"{i:04d}_{path.stem[:40]}.png")
            written += 1
        except Exception as exc:  # noqa: BLE001 - a broken file is left out and reported
            print(f"skipped {path}: {exc}", file=sys.stderr)
    return written


def build(out: Path, raw: Path, only: set[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}

    if "sample" in only:
        sample = out / "sample"
        if not sample.exists():
            shutil.copytree(REPO / "data" / "sample", sample, ignore=shutil.ignore_patterns("*.md"))
        counts["sample"] = {
            c.name: len(images_under(c)) for c in sorted(sample.iterdir()) if c.is_dir()
        }

    if "tuxpaint" in only:
        tux = fetch("tuxpaint-stamps-default", raw / "tux")
        counts["tuxpaint"] = {
            c: copy_class(images_under(tux / c), out / "tuxpaint" / c, cap=100) for c in TUXPAINT
        }

    if only & {"openclipart", "openclipart_top"}:
        ocp = fetch("openclipart-png", raw / "ocp")
    if "openclipart" in only:
        counts["openclipart"] = {
            name: copy_class(images_under(ocp / sub), out / "openclipart" / name, cap=80)
            for name, sub in OPENCLIPART.items()
        }
    if "openclipart_top" in only:
        counts["openclipart_top"] = {
            top: copy_class(
                [p for p in images_under(ocp / top)
                 if not any(p.is_relative_to(ocp / used) for used in OPENCLIPART_USED)],
                out / "openclipart_top" / top,
                cap=60,
            )
            for top in OPENCLIPART_TOP
        }  # fmt: skip

    if "digits" in only:
        digits = out / "digits"
        if not digits.exists():
            subprocess.run(
                [sys.executable, str(REPO / "scripts" / "render_digits.py"), str(digits),
                 "--per-class", "100"],
                check=True,
            )  # fmt: skip
        counts["digits"] = {
            c.name: len(images_under(c)) for c in sorted(digits.iterdir()) if c.is_dir()
        }

    if "icons" in only:
        icons = fetch("gnome-icon-theme", raw / "icons") / "48x48"
        counts["icons"] = {
            c: copy_class(images_under(icons / c), out / "icons" / c, cap=None) for c in ICONS
        }
    if "oxygen" in only:
        oxygen = fetch("oxygen-icon-theme", raw / "oxygen") / "48x48"
        counts["oxygen"] = {
            c: copy_class(images_under(oxygen / c), out / "oxygen" / c, cap=80) for c in OXYGEN
        }
    for name, per_class in counts.items():
        print(f"{name}: {len(per_class)} classes, {sum(per_class.values())} images {per_class}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--raw", type=Path, default=Path("/tmp/rayclust-quality-raw"))
    parser.add_argument("--only", nargs="*", choices=ALL, default=ALL, help="these only")
    args = parser.parse_args()
    build(args.out, args.raw, set(args.only))


if __name__ == "__main__":
    main()
