"""Issue 18 item 12: a user's mistake is one line on stderr, exit 2, before any heavy work,
and leaves no run folder behind.

The table runs ``rayclust cluster`` in this process with the scan and the extraction
replaced by tripwires where the mistake must be caught before them, so no model is loaded.
The cases after the table (a full disk, a path listed twice, --pca above the dimension)
run a whole, tiny run: the local engine and the ``pixels16`` view (no network, no Ray).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rayclust import pipeline
from rayclust.cli import main


def _png(path: Path, value: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = value + np.random.default_rng(seed).integers(0, 30, (20, 20, 3))
    Image.fromarray(pixels.astype("uint8")).save(path)
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "images"
    for i in range(3):
        _png(root / "dark" / f"{i}.png", 10, i)
        _png(root / "light" / f"{i}.png", 200, i)
    return root


def _read_only_folder(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes through permission bits: sysfs refuses even root
        return Path("/sys/rayclust-test-output")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "run"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# name: (how to build the source, extra arguments, the output or None for the default,
# what the message says, the last stage that may run: "load" (nothing) or "scan")
CASES = {
    "empty-folder": (lambda t, i: (t / "empty").mkdir() or t / "empty", [], None,
                     "has no usable images (0 files skipped)", "scan"),
    "only-non-images": (lambda t, i: _write(t / "docs" / "a.txt", "x").parent, [], "out",
                        "has no usable images (1 files skipped", "scan"),
    "header-less-csv": (lambda t, i: _write(i / "list.csv", "dark/0.png,dark\n"), [], "out",
                        "needs a header with a 'path' column", "scan"),
    "unknown-view": (lambda t, i: i, ["--view", "resnet5O"], "out",
                     "views: unknown view 'resnet5O'; did you mean", "load"),
    "bad-backend": (lambda t, i: i, ["clustering.backend=faiz"], "out",
                    "clustering.backend='faiz' is not a clustering backend", "load"),
    "negative-silhouette-sample": (lambda t, i: i, ["evaluation.silhouette_sample=-5"], "out",
                                   "evaluation.silhouette_sample=-5 should be >= 2", "load"),
    "zero-neighbors": (lambda t, i: i, ["clustering.n_neighbors=0"], "out",
                       "clustering.n_neighbors=0 should be >= 1", "load"),
    "broken-yaml-override": (lambda t, i: i, ["clustering.seeds=[1,"], "out",
                             "override clustering.seeds is not valid YAML",
                             "load"),
    "broken-yaml-config": (lambda t, i: i, ["--config", "{tmp}/bad.yaml"], "out",
                           "bad.yaml is not valid YAML", "load"),
    "output-is-a-file": (lambda t, i: i, [], "a-file",
                         "is a file, not a folder", "load"),
    "output-below-a-file": (lambda t, i: i, [], "a-file/run",
                            "on the way to the output, is a file", "load"),
    "output-read-only": (lambda t, i: i, [], "read-only",
                         "is not writable", "load"),
    "missing-source": (lambda t, i: t / "nowhere", [], "out", "does not exist", "scan"),
    "no-clusters-no-labels": (lambda t, i: i, ["--clusters", "__none__"], "out",
                              "clustering.n_clusters is not set and there are no labels",
                              "scan"),
}  # fmt: skip


@pytest.fixture
def tripwires(monkeypatch):
    """Stages that must not run: the test sets ``allowed`` to the last stage that may."""
    state = {"allowed": "load"}
    real_scan = pipeline.scan

    def scan(config):
        if state["allowed"] != "scan":
            raise AssertionError("the scan started before the mistake was reported")
        return real_scan(config)

    def heavy(*args, **kwargs):
        raise AssertionError("extraction (or Ray) started before the mistake was reported")

    monkeypatch.setattr(pipeline, "scan", scan)
    monkeypatch.setattr(pipeline, "extract", heavy)
    monkeypatch.setattr(pipeline, "ensure_ray", heavy)
    return state


@pytest.mark.parametrize("case", list(CASES))
def test_user_mistakes_are_one_line_exit_2_before_heavy_work(
    case, tmp_path, images, tripwires, monkeypatch, capsys
):
    make_source, extra, output, message, allowed = CASES[case]
    tripwires["allowed"] = allowed
    monkeypatch.chdir(tmp_path)  # the default output, runs/<name>, lands here
    _write(tmp_path / "bad.yaml", "clustering:\n  seeds: [1,\n")
    _write(tmp_path / "a-file", "not a folder")
    source = make_source(tmp_path, images)
    argv = ["cluster", str(source), "--view", "pixels16", "--no-mlflow", "-q"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "extraction.engine=local"]
    if output == "read-only":
        output_path = _read_only_folder(tmp_path)
    else:
        output_path = tmp_path / (output or "runs")
    if output is not None:
        argv += ["--output", str(output_path)]
    args = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    if "__none__" in args:
        args = []  # no --clusters and no labels
    else:
        argv += ["--clusters", "2"]
    argv += args

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rayclust cluster: error: "), err
    assert message in lines[0]
    if output in (None, "out"):
        assert not output_path.exists()  # no empty run folder (nor runs/) left behind
    elif output == "a-file":
        assert output_path.read_text() == "not a folder"
    elif output == "read-only":
        assert not output_path.exists()


def test_run_with_a_broken_config_file_is_one_line(tmp_path, capsys):
    config = _write(tmp_path / "c.yaml", "input:\n  source: [x\n")
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"config file {config} is not valid YAML" in err


# --- whole (tiny) runs -----------------------------------------------------------------------


def _run_argv(source: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "cluster", str(source), "--view", "pixels16", "--clusters", "2", "--seeds", "1",
        "--output", str(tmp_path / "out" / "run"), "--cache-dir", str(tmp_path / "cache"),
        "--no-mlflow", "-q", "extraction.engine=local", *extra,
    ]  # fmt: skip


def test_a_full_disk_while_writing_the_report_fails_the_run(images, tmp_path, monkeypatch, capsys):
    real_write_text, real_write_bytes = Path.write_text, Path.write_bytes

    def full(path, data, *args, **kwargs):
        if path.name == "report.html":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        writer = real_write_text if isinstance(data, str) else real_write_bytes
        return writer(path, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    monkeypatch.setattr(Path, "write_bytes", full)
    assert main(_run_argv(images, tmp_path)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "report.html: No space left on device; free some space" in err
    assert not (tmp_path / "out").exists()  # no truncated record left behind


def test_a_path_listed_twice_is_clustered_once(images, tmp_path):
    from rayclust import runs

    listing = _write(
        images / "list.txt",
        "dark/0.png\ndark/1.png\nlight/0.png\n./dark/0.png\nlight/1.png\nlight/0.png\n",
    )
    assert main(_run_argv(listing, tmp_path)) == 0
    run = runs.read_run(tmp_path / "out" / "run")
    assert len(run.paths) == 4 and len(set(run.paths)) == 4
    reasons = {Path(row["path"]).name: row["reason"] for row in run.skipped}
    assert sorted(row["reason"] for row in run.skipped) == [
        "duplicate of list entry 1",
        "duplicate of list entry 3",
    ]
    assert reasons["0.png"].startswith("duplicate of list entry")


def test_pca_at_or_above_the_dimension_is_a_recorded_note(images, tmp_path, caplog):
    import json

    assert main(_run_argv(images, tmp_path, "--pca", "5000")) == 0
    run_dir = tmp_path / "out" / "run"
    note = json.loads((run_dir / "metrics.json").read_text())["notes"]["pca"]
    assert "clustering.pca_dim=5000 is not below min(n_images=6, view dim)" in note
    assert "PCA was not applied" in note and "pixels16 (dim 768)" in note
    assert note in (run_dir / "results.md").read_text()
    assert note in caplog.text


def test_huge_cached_features_with_no_normalize_are_one_line(images, tmp_path, capsys):
    """Issue 18 item 1 through the CLI: a cached row of 2e19 clustered with --no-normalize
    once crashed the process (FAISS memory corruption); now a one-line error, no folder."""
    from rayclust.images import ImageSet
    from rayclust.views import extraction_specs
    from rayclust.views.store import FeatureStore

    ids = ImageSet.from_folder(images, progress=False).image_ids
    features = np.random.default_rng(0).random((len(ids), 768), dtype=np.float32)
    features[2, 5] = 2e19
    (spec,) = extraction_specs("pixels16")  # the key the run extracts under
    key = spec.key()
    FeatureStore(tmp_path / "cache", key, dim=768).write(ids, features)  # checksums agree
    assert main(_run_argv(images, tmp_path, "--no-normalize", "clustering.backend=faiss")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "cannot be clustered: Input has 1 of 6 rows too large to cluster" in err
    assert "drop --no-normalize" in err
    assert not (tmp_path / "out").exists()


def test_a_full_cache_disk_during_extraction_is_one_line(images, tmp_path, monkeypatch, capsys):
    from rayclust.views.store import FeatureStore

    def full(self, ids, features):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path / "shard-x.npy"))

    monkeypatch.setattr(FeatureStore, "write", full)
    assert main(_run_argv(images, tmp_path)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "could not write the feature cache" in err and "give another --cache-dir" in err
    assert not (tmp_path / "out").exists()
