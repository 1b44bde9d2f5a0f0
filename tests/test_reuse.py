"""Issue 19: a run's clusters reused - ``rayclust predict`` and ``rayclust export``.

Real runs on the shipped sample with the raw-pixel views (no network, local engine): copies
of known images under new names must land in their originals' clusters, through the run's
saved reduction and centroids. Export is checked on a hand-built run folder, where the
awkward cases (one file name twice in a cluster, a name that is not UTF-8, a file gone
since the run) are laid out exactly.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import rayclust
from rayclust import runs
from rayclust.cli import EXIT_OK, EXIT_USAGE, main
from rayclust.clustering import load_features, read_features
from rayclust.config import ConfigError, load_config
from rayclust.pipeline import run
from rayclust.reuse import ClusterModel, RunModelError
from rayclust.selection import representations, score_space

N_COPIES = 12


def _run(sample_dir: Path, work: Path, name: str, **sections) -> Path:
    changes = {
        "input": {"source": str(sample_dir)},
        "output": str(work / name),
        "extraction": {"cache_dir": str(work / "cache"), "engine": "local"},
        "tracking": {"enabled": False},
        "report": {"enabled": False},
        **sections,
    }
    run(load_config(None, changes), progress=False)
    return work / name


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reuse")


@pytest.fixture(scope="module")
def kmeans_run(work, sample_dir) -> Path:
    clustering = {"n_clusters": 4, "seeds": 1, "select": "off", "algorithm": "kmeans"}
    return _run(sample_dir, work, "kmeans", views=["pixels16"], clustering=clustering)


@pytest.fixture(scope="module")
def copies(work, kmeans_run) -> tuple[Path, dict[str, str]]:
    """Every 10th image of the run copied under a new name: new path -> original path."""
    folder = work / "new"
    folder.mkdir()
    originals = runs.read_run(kmeans_run).paths[::10][:N_COPIES]
    mapping = {}
    for i, original in enumerate(originals):
        new = folder / f"new_{i:02d}{Path(original).suffix}"
        shutil.copyfile(original, new)
        mapping[str(new)] = original
    return folder, mapping


def _run_clusters(run_dir: Path) -> dict[str, int]:
    folder = runs.read_run(run_dir)
    return dict(zip(folder.paths, map(int, folder.clusters), strict=True))


def _model_clusters(run_dir: Path, cache: Path) -> dict[str, int]:
    """The saved model's own assignment of the run's images (their stored features)."""
    model = ClusterModel.load(run_dir)
    folder = runs.read_run(run_dir)
    raw = read_features(cache, folder.image_ids, model.view_keys)
    clusters, _ = model.assign(model.transform(raw))
    return dict(zip(folder.paths, map(int, clusters), strict=True))


def _model_space_and_run_features(run_dir: Path, cache: Path):
    """The model's space for the run's images from raw stored features, and the clustering
    stage's own features of them (``load_features`` with the run's config)."""
    model = ClusterModel.load(run_dir)
    folder = runs.read_run(run_dir)
    views = runs.read_run(run_dir).metrics["view_keys"]
    raw = read_features(cache, folder.image_ids, model.view_keys)
    features = load_features(load_config(run_dir / runs.CONFIG_FILE), folder.image_ids, views)
    return model, model.transform(raw), features


# -- predict ----------------------------------------------------------------------------------


def test_kmeans_copies_land_in_their_originals_clusters(kmeans_run, copies, work):
    folder, mapping = copies
    out = work / "pred_kmeans.csv"
    prediction = rayclust.predict(kmeans_run, folder, output=out, progress=False)
    clusters = _run_clusters(kmeans_run)
    got = dict(zip(prediction.paths, map(int, prediction.clusters), strict=True))
    assert got == {new: clusters[original] for new, original in mapping.items()}
    assert len(set(got.values())) >= 2  # the copies span several clusters: not a trivial pass
    # K-means' clusters are nearest-centroid by construction: the model reproduces all of them
    info = ClusterModel.load(kmeans_run).info
    assert info["agreement"]["euclidean"] == 1.0
    assert prediction.extraction["pixels16"] == {"n_extracted": 0, "n_cached": N_COPIES}
    rows = runs.read_csv(out)
    assert [r["path"] for r in rows] == prediction.paths
    assert [int(r["cluster"]) for r in rows] == list(prediction.clusters)
    assert all(float(r["distance"]) >= 0 for r in rows)
    assert list(rows[0]) == ["path", "image_id", "cluster", "distance"]
    # the copies are the run's own images: at most 5% of a cluster's lie beyond its radius
    assert prediction.beyond.sum() <= 1


def test_noise_lies_beyond_every_cluster_radius(kmeans_run, tmp_path):
    folder = tmp_path / "noise"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # saturated blocks at the view's own 16 px, unlike any sample image
        blocks = rng.integers(0, 2, (16, 16, 3), dtype=np.uint8) * 255
        Image.fromarray(blocks.repeat(4, axis=0).repeat(4, axis=1)).save(folder / f"n{i}.png")
    prediction = rayclust.predict(kmeans_run, folder, progress=False)
    radius = ClusterModel.load(kmeans_run).radius
    assert prediction.beyond.all(), (prediction.distances, radius)


def test_selection_run_predicts_through_its_graph_space(work, sample_dir, copies):
    """The default selection (pixels16 vs pixels, kmeans / spectral / ward): the winner's
    space is rebuilt for new images, and a copy gets exactly what its original gets."""
    run_dir = _run(sample_dir, work, "selected", views=["pixels16"],
                   clustering={"n_clusters": 4, "seeds": 1})  # fmt: skip
    model, space, features = _model_space_and_run_features(run_dir, work / "cache")
    metrics = runs.read_run(run_dir).metrics
    rep, algorithm = metrics["selection"]["representation"], metrics["selection"]["algorithm"]
    assert model.representation == rep and model.graph_space == (algorithm != "kmeans")
    # the space the selection clustered, computed by its own code
    reference = representations(features.per_view)[rep]
    if model.graph_space:
        reference = score_space(reference)
    np.testing.assert_allclose(space, reference, atol=1e-4)
    folder, mapping = copies
    prediction = rayclust.predict(run_dir, folder, progress=False)
    expected = _model_clusters(run_dir, work / "cache")
    got = dict(zip(prediction.paths, map(int, prediction.clusters), strict=True))
    assert got == {new: expected[original] for new, original in mapping.items()}
    # the recorded agreement is the share of the run's images the model puts back
    clusters = _run_clusters(run_dir)
    agreement = np.mean([expected[p] == clusters[p] for p in clusters])
    assert model.info["agreement"][model.metric] == pytest.approx(agreement)
    assert agreement >= 0.8, agreement


def test_consensus_run_predicts_in_the_weighted_concatenation(work, sample_dir, copies):
    """Two views, each through its own PCA, weighted as the consensus weighted them."""
    run_dir = _run(sample_dir, work, "consensus", views=["pixels16", "pixels24"],
                   clustering={"n_clusters": 4, "seeds": 1, "pca_dim": 20})  # fmt: skip
    model, space, features = _model_space_and_run_features(run_dir, work / "cache")
    assert all(v.pca_components.shape[0] == 20 for v in model.views)
    metrics = runs.read_run(run_dir).metrics
    assert metrics["primary"].startswith("consensus:") and model.representation == "concat"
    weights = metrics["view_weights"]
    assert {v.name: v.weight for v in model.views} == pytest.approx(weights)
    assert min(weights.values()) < 0.99  # the views weigh differently: the weights matter
    # plain numpy: each view over its RMS norm, times sqrt(its consensus weight)
    reference = np.concatenate(
        [x / np.sqrt(np.mean(np.sum(x.astype(np.float64) ** 2, axis=1))) * np.sqrt(weights[v])
         for v, x in features.per_view.items()], axis=1,
    )  # fmt: skip
    np.testing.assert_allclose(space, reference, atol=1e-4)
    folder, mapping = copies
    prediction = rayclust.predict(run_dir, folder, progress=False)
    expected = _model_clusters(run_dir, work / "cache")
    got = dict(zip(prediction.paths, map(int, prediction.clusters), strict=True))
    assert got == {new: expected[original] for new, original in mapping.items()}


def test_predict_command_writes_csv_and_summary(kmeans_run, copies, work, capsys):
    folder, _ = copies
    out = work / "cli_pred.csv"
    assert main(["predict", str(kmeans_run), str(folder), "-o", str(out), "-q"]) == EXIT_OK
    printed = capsys.readouterr().out
    assert f"{N_COPIES} images put in" in printed and str(out) in printed
    assert len(runs.read_csv(out)) == N_COPIES


def test_predict_refuses_a_run_without_saved_clusters_before_extraction(
    kmeans_run, copies, tmp_path, capsys
):
    old = tmp_path / "old_run"
    shutil.copytree(kmeans_run, old)
    (old / runs.MODEL_FILE).unlink()
    (old / runs.MODEL_INFO_FILE).unlink()
    cache = tmp_path / "cache"
    cache.mkdir()
    argv = ["predict", str(old), str(copies[0]), "--cache-dir", str(cache), "-q"]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no saved clusters" in err
    assert not any(cache.iterdir())  # nothing was extracted
    argv = ["predict", str(kmeans_run), str(copies[0]), "-o", str(tmp_path), "--cache-dir",
            str(cache), "-q"]  # fmt: skip
    assert main(argv) == EXIT_USAGE
    assert "is a folder" in capsys.readouterr().err and not any(cache.iterdir())


def test_predict_refuses_empty_source_and_stale_model(kmeans_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no usable images"):
        rayclust.predict(kmeans_run, empty, progress=False)
    stale = tmp_path / "stale"
    shutil.copytree(kmeans_run, stale)
    with (stale / runs.ASSIGNMENTS_FILE).open("a") as handle:
        handle.write("/x.png,abc,0,\n")  # another run rewrote the folder
    with pytest.raises(RunModelError, match="belongs to another run"):
        rayclust.predict(stale, empty, progress=False)


# -- export -----------------------------------------------------------------------------------

BAD_NAME = b"caf\xe9.png"  # Latin-1: not valid UTF-8


def _png(path: str | Path, value: int) -> None:
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(os.fsdecode(path), "PNG")


@pytest.fixture
def hand_run(tmp_path) -> tuple[Path, list[str]]:
    """Cluster 0: a/x.png, b/x.png (one name twice), a non-UTF-8 name; cluster 7: y.png and
    a file deleted since the run."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    paths = [str(src / "a" / "x.png"), str(src / "b" / "x.png"), str(src / "y.png")]
    for value, path in enumerate(paths):
        _png(path, 40 * value)
    bad = os.fsdecode(os.path.join(os.fsencode(src), BAD_NAME))
    try:
        _png(bad, 200)
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")
    gone = str(src / "gone.png")
    paths += [bad, gone]
    run_dir = tmp_path / "run"
    runs.write_assignments(run_dir, paths, [f"id{i}" for i in range(5)], [0, 0, 7, 0, 7],
                           ["cat", "cat", "dog", "dog", "dog"])  # fmt: skip
    return run_dir, paths


def test_export_links_members_into_cluster_folders(hand_run, tmp_path):
    run_dir, paths = hand_run
    dest = tmp_path / "out"
    result = rayclust.export(run_dir, dest)
    zero, seven = dest / "cluster_000", dest / "cluster_007"
    assert sorted(p.name for p in dest.iterdir()) == [
        "README.txt", "cluster_000", "cluster_007", "export.csv"
    ]  # fmt: skip
    assert sorted(os.listdir(os.fsencode(zero))) == sorted([b"x.png", b"x_1.png", BAD_NAME])
    assert os.listdir(seven) == ["y.png"]
    for link, source in [(zero / "x.png", paths[0]), (zero / "x_1.png", paths[1]),
                         (seven / "y.png", paths[2])]:  # fmt: skip
        assert link.is_symlink() and link.resolve() == Path(source).resolve()
    bad_link = os.path.join(os.fsencode(zero), BAD_NAME)
    assert os.path.realpath(bad_link) == os.path.realpath(os.fsencode(paths[3]))
    assert result.n_written == 4 and result.skipped[0][0] == paths[4]
    index = {r["path"]: r for r in runs.read_csv(dest / "export.csv")}
    assert index[paths[4]]["status"] == "skipped" and "missing" in index[paths[4]]["reason"]
    assert index[paths[1]]["file"] == "x_1.png" and index[paths[3]]["status"] == "linked"
    readme = (dest / "README.txt").read_text()
    assert "cluster_000: 3 images, majority label 'cat' (2/3)" in readme


def test_export_copy_and_dest_rules(hand_run, tmp_path, capsys):
    run_dir, paths = hand_run
    dest = tmp_path / "out"
    assert main(["export", str(run_dir), str(dest), "--copy"]) == EXIT_OK
    copied = dest / "cluster_007" / "y.png"
    assert not copied.is_symlink() and copied.read_bytes() == Path(paths[2]).read_bytes()
    capsys.readouterr()
    # a non-empty DEST is refused (one line, exit 2) and left as it was
    assert main(["export", str(run_dir), str(dest)]) == EXIT_USAGE
    assert "is not empty" in capsys.readouterr().err and not copied.is_symlink()
    # --force replaces the earlier export's cluster folders, stale ones included
    (dest / "cluster_042").mkdir()
    assert main(["export", str(run_dir), str(dest), "--force"]) == EXIT_OK
    assert copied.is_symlink() and not (dest / "cluster_042").exists()
    # a file as DEST, a folder without assignments
    assert main(["export", str(run_dir), str(paths[2])]) == EXIT_USAGE
    assert "is a file" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "src"), str(tmp_path / "o2")]) == EXIT_USAGE
    assert "assignments.csv is missing" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_default_view_copies_reuse_the_cache_and_their_clusters(tmp_path, sample_dir):
    """The default network view on ten images: the copies cost no forward pass (the run's
    spec, precision included, gives the same cache keys) and land with their originals."""
    source = tmp_path / "ten"
    source.mkdir()
    for category in ("flowers", "computers"):
        for path in sorted((sample_dir / category).glob("*.png"))[:5]:
            shutil.copyfile(path, source / f"{category}_{path.name}")
    clustering = {"n_clusters": 2, "seeds": 1, "select": "off", "algorithm": "kmeans"}
    run_dir = _run(source, tmp_path, "effnet", clustering=clustering)
    (spec,) = ClusterModel.load(run_dir).view_specs()
    assert spec.name == "efficientnet_lite0" and spec.decode == "draft-v1"
    new = tmp_path / "new"
    new.mkdir()
    originals = sorted(source.iterdir())[::3]
    for i, original in enumerate(originals):
        shutil.copyfile(original, new / f"copy_{i}.png")
    prediction = rayclust.predict(run_dir, new, progress=False)
    assert prediction.extraction["efficientnet_lite0"]["n_extracted"] == 0
    clusters = _run_clusters(run_dir)
    assert list(prediction.clusters) == [clusters[str(p)] for p in originals]
