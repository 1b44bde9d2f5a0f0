"""Issue 18 item 7: a file name that is not UTF-8 (bytes on disk) must not kill the run.

POSIX names are bytes; Python hands a non-UTF-8 name over with surrogate escapes. The run's
CSV files keep those bytes verbatim (``runs.CSV_ERRORS``), so the path read back opens the
file, and the HTML report shows the name escaped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rayclust import runs
from rayclust.images import ImageSet

BAD_NAME = b"caf\xe9.png"  # Latin-1 "café": not valid UTF-8


def _write_png(path: str | bytes, value: int, seed: int) -> None:
    pixels = value + np.random.default_rng(seed).integers(0, 20, (24, 24, 3))
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    Image.fromarray(pixels.astype("uint8")).save(path, format="PNG")


@pytest.fixture
def folder_with_bad_name(tmp_path) -> Path:
    root = tmp_path / "images"
    for label, value in (("dark", 20), ("light", 220)):
        (root / label).mkdir(parents=True)
        for i in range(4):
            _write_png(str(root / label / f"{i}.png"), value, i)
    bad = os.path.join(os.fsencode(root / "dark"), BAD_NAME)
    try:
        _write_png(bad, 25, 9)
    except OSError:  # a file system that insists on UTF-8 names (macOS)
        pytest.skip("this file system refuses non-UTF-8 names")
    with open(os.path.join(os.fsencode(root), b"notes\xff.txt"), "wb") as handle:
        handle.write(b"not an image")  # skipped: its name must reach skipped.csv too
    return root


def test_csv_files_keep_the_bytes_of_a_non_utf8_name(folder_with_bad_name, tmp_path):
    images = ImageSet.from_folder(folder_with_bad_name, progress=False)
    bad_path = next(p for p in images.paths if os.fsencode(p).endswith(BAD_NAME))
    run_dir = tmp_path / "run"
    runs.write_manifest(run_dir, images.records)
    runs.write_skipped(run_dir, images.skipped)
    runs.write_assignments(run_dir, images.paths, images.image_ids, [0] * len(images))
    assert BAD_NAME in (run_dir / runs.MANIFEST_FILE).read_bytes()
    assert b"notes\xff.txt" in (run_dir / runs.SKIPPED_FILE).read_bytes()
    back = runs.read_run(run_dir)
    assert bad_path in back.paths and Path(bad_path).is_file()  # the same str opens the file
    assert back.skipped[0]["path"].endswith("notes\udcff.txt")


def test_a_list_file_naming_a_non_utf8_file_reads_it(folder_with_bad_name, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"dark/0.png\ndark/" + BAD_NAME + b"\n")
    listing = listing.rename(folder_with_bad_name / "list.txt")
    images = ImageSet.from_list(listing, progress=False)
    assert len(images.records) == 2 and not images.skipped


def test_a_run_over_a_non_utf8_name_completes(folder_with_bad_name, tmp_path):
    from rayclust.config import load_config
    from rayclust.pipeline import run

    config = load_config(
        None,
        {
            "input": {"source": str(folder_with_bad_name), "labels_from_folders": True},
            "views": ["pixels16"],
            "output": str(tmp_path / "run"),
            "extraction": {"engine": "local", "cache_dir": str(tmp_path / "cache")},
            "clustering": {"seeds": 1},
            "tracking": {"enabled": False},
        },
    )
    result = run(config, progress=False)
    assert result.n_images == 9 and result.n_skipped == 1
    manifest = (result.run_dir / runs.MANIFEST_FILE).read_bytes()
    assert BAD_NAME in manifest
    report = (result.run_dir / "report.html").read_bytes()
    report.decode("utf-8")  # the page itself stays valid UTF-8
    assert b"caf\\udce9.png" in report  # the name shown escaped
