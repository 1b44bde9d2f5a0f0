"""``rayclust export RUN_DIR DEST``: a run's clusters as folders people can browse.

DEST gets one folder per cluster, ``cluster_000``, ``cluster_001``, ... (numbered as in
assignments.csv; names by label would merge two clusters of one majority label), holding a
symbolic link to each member (``--copy``: a copy), plus

    export.csv   cluster, folder, file, path, image_id, label, status, reason: one row per
                 image of the run; status "linked" / "copied" / "skipped" (with the reason:
                 the source file is gone, or is not a local file)
    README.txt   what was exported from where, and each cluster's size (and majority label
                 when the run had labels)

Two members with one file name in a cluster are kept apart by a suffix (``a.png``,
``a_1.png``); names that are not UTF-8 keep their bytes (as the run's CSV files do).
From Python: ``rayclust.export(run_dir, dest, copy=False, force=False)``.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayclust import runs
from rayclust.cli_common import EXIT_OK, CommandError, run_standalone
from rayclust.config import ConfigError

INDEX_FILE = "export.csv"
README_FILE = "README.txt"
INDEX_COLUMNS = ("cluster", "folder", "file", "path", "image_id", "label", "status", "reason")
FOLDER_PREFIX = "cluster_"
_FOLDER = re.compile(rf"^{FOLDER_PREFIX}\d+$")


@dataclass
class ExportResult:
    dest: Path
    folders: dict[int, Path]  # cluster id -> its folder
    n_written: int
    mode: str  # "linked" or "copied"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def check_dest(dest: Path, run_dir: Path, force: bool) -> None:
    """DEST is new, an empty folder, or (``force``) a folder to write into."""
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"{dest} is a file, not a folder; give a new or empty folder")
    if dest.resolve() == run_dir.resolve():
        raise ConfigError(f"{dest} is the run folder itself; give another folder")
    if dest.is_dir() and not force:
        entries = sorted(os.listdir(dest))
        if entries:
            raise ConfigError(
                f"{dest} is not empty ({len(entries)} entries, e.g. {entries[0]!r}); give a "
                "new or empty folder, or --force to write into it (cluster folders of an "
                "earlier export there are replaced)"
            )


def folder_names(clusters: Sequence[int]) -> dict[int, str]:
    """``cluster_000`` ...: zero-padded to the widest id, so the folders sort by number."""
    width = max(3, *(len(str(c)) for c in clusters))
    return {c: f"{FOLDER_PREFIX}{c:0{width}d}" for c in clusters}


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``stem_1.ext``, ``stem_2.ext`` ... when a member already took it."""
    if name not in taken:
        return name
    stem, ext = os.path.splitext(name)
    n = 1
    while f"{stem}_{n}{ext}" in taken:
        n += 1
    return f"{stem}_{n}{ext}"


def _clear(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _place(source: str, target: Path, copy: bool) -> str | None:
    """Link or copy one member; the reason when it cannot be, None when done."""
    if "://" in source:
        return "not a local file: only local files can be linked or copied"
    if not os.path.isfile(source):
        return "source file missing (moved or deleted since the run)"
    try:
        if copy:
            shutil.copy2(source, target)
        else:
            os.symlink(os.path.abspath(source), target)
    except OSError as exc:
        if exc.errno in runs.DISK_FULL_ERRNOS:
            raise
        return f"could not {'copy' if copy else 'link'}: {exc.strerror or exc}"
    return None


def export(
    run_dir: str | Path, dest: str | Path, *, copy: bool = False, force: bool = False
) -> ExportResult:
    """Write the clusters of the run in ``run_dir`` as folders under ``dest`` (see the
    module). ``ConfigError`` (``runs.RunFolderError`` for the run folder) before any write
    when the run has no assignments or ``dest`` is not new or empty (unless ``force``)."""
    run_dir, dest = Path(run_dir), Path(dest)
    run = runs.read_run(run_dir, require_assignments=True)
    if not run.has_assignments:
        raise ConfigError(f"{run_dir / runs.ASSIGNMENTS_FILE} lists no images")
    check_dest(dest, run_dir, force)
    clusters = sorted({int(c) for c in run.clusters})
    names = folder_names(clusters)
    mode = "copied" if copy else "linked"
    with runs.recording(dest, "the export", "DEST"):
        dest.mkdir(parents=True, exist_ok=True)
        if (dest / INDEX_FILE).is_file():  # an earlier export (only reachable with force)
            for entry in dest.iterdir():
                if _FOLDER.match(entry.name):
                    _clear(entry)
        folders = {}
        for cluster, name in names.items():
            folders[cluster] = dest / name
            _clear(folders[cluster])
            folders[cluster].mkdir()
        taken: dict[int, set[str]] = {c: set() for c in clusters}
        rows, skipped, n_written = [], [], 0
        for path, image_id, cluster, label in zip(
            run.paths, run.image_ids, run.clusters, run.labels, strict=True
        ):
            cluster = int(cluster)
            base = posixpath.basename(path) if "://" in path else os.path.basename(path)
            file = unique_name(base or image_id, taken[cluster])
            reason = _place(path, folders[cluster] / file, copy)
            if reason is None:
                taken[cluster].add(file)
                n_written += 1
            else:
                skipped.append((path, reason))
            status = "skipped" if reason else mode
            rows.append((cluster, names[cluster], "" if reason else file, path, image_id,
                         label, status, reason or ""))  # fmt: skip
        runs.write_csv(dest / INDEX_FILE, INDEX_COLUMNS, rows)
        (dest / README_FILE).write_text(
            _readme(run, names, mode, n_written, skipped), errors="surrogateescape"
        )
    return ExportResult(dest, folders, n_written, mode, skipped)


def _readme(run: runs.RunFolder, names: dict[int, str], mode: str, n_written: int,
            skipped: list[tuple[str, str]]) -> str:  # fmt: skip
    sizes = Counter(int(c) for c in run.clusters)
    lines = [
        f"Clusters of the rayclust run {run.name} ({run.run_dir.resolve()}),",
        f"one folder per cluster: {n_written} images {mode}, {len(skipped)} skipped "
        f"(see {INDEX_FILE}).",
        "",
    ]
    by_cluster: dict[int, list[str]] = {c: [] for c in names}
    for cluster, label in zip(run.clusters, run.labels, strict=True):
        by_cluster[int(cluster)].append(label)
    for cluster, name in names.items():
        line = f"{name}: {sizes[cluster]} images"
        if run.has_labels:
            label, n = Counter(by_cluster[cluster]).most_common(1)[0]
            line += f", majority label {label!r} ({n}/{sizes[cluster]})"
        lines.append(line)
    return "\n".join(lines) + "\n"


# -- the command -------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``export`` to the ``rayclust`` command's sub-commands."""
    parser = subparsers.add_parser(
        "export",
        description="Write one folder per cluster of a run under DEST, with symbolic links to "
        "(or copies of) its images, an index (export.csv) and a README.txt.",
    )
    parser.add_argument("run_dir", type=Path, help="a run folder with assignments.csv")
    parser.add_argument("dest", type=Path, help="a new or empty folder")
    parser.add_argument("--copy", action="store_true", help="copy the images (default: link)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty DEST (cluster folders of an earlier export are replaced)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        result = export(args.run_dir, args.dest, copy=args.copy, force=args.force)
    except runs.RunFolderError as exc:
        raise CommandError(str(exc)) from None
    print(
        f"{len(result.folders)} cluster folders in {result.dest}: {result.n_written} images "
        f"{result.mode}" + (f", {len(result.skipped)} skipped" if result.skipped else "")
    )
    for path, reason in result.skipped[:5]:
        print(f"  skipped {path}: {reason}")
    print(f"index: {result.dest / INDEX_FILE}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``rayclust export`` on its own (``python -m rayclust.reuse.folders``)."""
    return run_standalone(register, argv)
