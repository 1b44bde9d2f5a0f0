"""A worker scan stores each image once: the same bytes under several names, read in
different batches, get one forward pass and one stored row (issue 16).

One forward actor takes the batches one after the other, so the first batch holding an
image has written it (and said so) before any later batch asks: the test does not depend on
timing. The counts match a driver scan's: an image extracted once, copies counted nowhere.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rayclust.images import ScanParts, iter_source
from rayclust.views import FeatureStore, scan_and_extract_stream, stream_scan
from rayclust.views.worker import FaultHooks
from tests.cloud.test_worker_scan_scale import _extraction, _tiny_pngs

N_DISTINCT = 30


def _copies(tmp_path: Path) -> Path:
    """30 distinct images, each under a/, b/ and c/ (rows i, 30 + i, 60 + i of the listing:
    always three different batches of 10), and image 0 a fourth time next to itself in a/
    (a copy inside one batch)."""
    originals = _tiny_pngs(tmp_path / "originals", N_DISTINCT) / "000"
    source = tmp_path / "images"
    for folder in ("a", "b", "c"):
        shutil.copytree(originals, source / folder)
    shutil.copy(originals / "000000.png", source / "a" / "000000_copy.png")
    return source


def _stored_rows(store_dir: Path) -> list[str]:
    """Every id of every shard file, repeats included (what a reader's index would hide)."""
    return [i for f in sorted(store_dir.glob("*.ids.json")) for i in json.loads(f.read_text())]


def test_copies_in_different_batches_are_stored_once(ray_session, tmp_path):
    source = _copies(tmp_path)
    specs, config = _extraction(tmp_path, batch_size=10)
    assert config.actors_per_view == 1
    results = scan_and_extract_stream(
        iter_source(source), specs, tmp_path / "cache", config, tmp_path / "parts",
        max_pixels=10**6,
    )  # fmt: skip
    result = results["pixels16"]

    images = ScanParts(tmp_path / "parts").image_set()
    assert len(images.records) == 3 * N_DISTINCT + 1  # every name, with its content id
    by_name = {Path(r.path).relative_to(source).as_posix(): r.image_id for r in images.records}
    for i in range(N_DISTINCT):
        assert by_name[f"a/{i:06d}.png"] == by_name[f"b/{i:06d}.png"] == by_name[f"c/{i:06d}.png"]
    assert by_name["a/000000_copy.png"] == by_name["a/000000.png"]
    distinct = set(by_name.values())
    assert len(distinct) == N_DISTINCT

    rows = _stored_rows(tmp_path / "cache" / result.spec_key)
    assert len(rows) == len(set(rows)) == N_DISTINCT, (len(rows), len(set(rows)))
    features = FeatureStore(tmp_path / "cache", result.spec_key).get(sorted(distinct))
    assert features.shape == (N_DISTINCT, 16 * 16 * 3) and np.isfinite(features).all()

    # As a driver scan counts: each image extracted once, none was stored before.
    assert (result.n_extracted, result.n_cached) == (N_DISTINCT, 0)
    assert not result.failed


def _batch(ids: list[str]) -> dict[str, np.ndarray]:
    """A decoded batch as the forward actor gets it: every row to do for view 0."""
    n = len(ids)
    return {
        "order": np.arange(n),
        "path": np.array([f"/x/{i}.png" for i in range(n)], dtype=object),
        "label": np.array([""] * n, dtype=object),
        "image_id": np.array(ids, dtype=object),
        "scan_skip": np.array([""] * n, dtype=object),
        "pixels_0": np.random.default_rng(0).random((n, 3, 16, 16), dtype=np.float32),
        "failure_0": np.array([""] * n, dtype=object),
        "todo_0": np.ones(n, dtype=bool),
    }


def test_only_a_confirmed_write_is_skipped(ray_session, tmp_path, monkeypatch):
    """A writer that dies in ``store.write`` has confirmed nothing: the batch run again
    writes its ids; once written, a later batch with them does nothing."""
    import ray

    (spec,), _ = _extraction(tmp_path)
    root = tmp_path / "cache"
    written = ray.remote(num_cpus=0)(stream_scan._WrittenIds).remote()
    ids = [f"{1:032x}", f"{2:032x}", f"{1:032x}"]
    keys = [int(i, 16) for i in ids[:2]]

    def forward() -> stream_scan._ScanForward:
        return stream_scan._ScanForward(spec, 0, 1, FaultHooks(), str(root), written=written)

    def killed(*args, **kwargs):
        raise SystemExit("killed mid-write")

    dying = forward()
    monkeypatch.setattr(dying.store, "write", killed)
    with pytest.raises(SystemExit):
        dying(_batch(ids))
    assert ray.get(written.written.remote(keys)) == []  # nothing confirmed, nothing skipped

    retry = forward()(_batch(ids))
    assert retry["wrote_0"].tolist() == [True, True, False]  # the repeat inside: once
    assert sorted(ray.get(written.written.remote(keys))) == sorted(keys)
    assert len(_stored_rows(root / spec.key())) == 2

    later = forward()(_batch(ids[:2]))
    assert later["wrote_0"].tolist() == [False, False]
    assert later["span_0"].tolist() == [[0.0, 0.0]] * 2  # no forward pass
    assert len(_stored_rows(root / spec.key())) == 2
    ray.kill(written)
