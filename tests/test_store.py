"""FeatureStore: round trip, order, duplicates, missing ids, atomic shards, persisted failures."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from rayclust.views.store import FeatureStore


def _features(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _ids(n: int, prefix: str = "img") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


def test_round_trip_across_shards_in_requested_order(tmp_path):
    store = FeatureStore(tmp_path, "viewkey", dim=8)
    ids = _ids(10)
    feats = _features(10)
    assert store.write(ids[:6], feats[:6]) == 6
    assert store.write(ids[6:], feats[6:]) == 4
    order = [7, 0, 9, 3, 3, 0]  # mixes shards and repeats ids
    got = store.get([ids[i] for i in order])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, feats[order])

    reopened = FeatureStore(tmp_path, "viewkey")
    assert reopened.dim == 8
    assert len(reopened) == 10
    assert reopened.n_shards == 2
    assert "img004" in reopened and "nope" not in reopened
    np.testing.assert_array_equal(reopened.get(ids), feats)
    meta = json.loads((tmp_path / "viewkey" / "meta.json").read_text())
    assert meta["dim"] == 8 and meta["dtype"] == "float32"


def test_reads_are_memory_mapped(tmp_path):
    store = FeatureStore(tmp_path, "k", dim=4)
    store.write(_ids(3), _features(3, dim=4))
    store = FeatureStore(tmp_path, "k")
    store.get(["img001"])
    assert isinstance(store._array(0), np.memmap)


def test_missing_ids_raise_keyerror_naming_count_and_first(tmp_path):
    store = FeatureStore(tmp_path, "k", dim=8)
    store.write(_ids(3), _features(3))
    with pytest.raises(
        KeyError, match=r"2 of 4 requested ids have no stored features \(first: x1, x2\)"
    ):
        store.get(["img000", "x1", "img002", "x2"])
    assert store.missing(["x1", "img000", "x1", "x2"]) == ["x1", "x2"]


def test_each_id_is_stored_once(tmp_path):
    store = FeatureStore(tmp_path, "k", dim=8)
    feats = _features(5)
    ids = _ids(5)
    store.write(ids[:3], feats[:3])
    # Re-writing overlapping ids (a retried batch) and repeats inside one call add only new ids.
    added = store.write(
        [ids[2], ids[3], ids[3], ids[4]], np.stack([feats[0], feats[3], feats[0], feats[4]])
    )
    assert added == 2
    assert len(store) == 5
    np.testing.assert_array_equal(store.get(ids), feats)  # first copy of img002/img003 wins
    assert store.write(ids, feats) == 0
    assert store.n_shards == 2


def test_a_write_not_remembered_is_stored_for_readers_but_not_indexed_by_the_writer(tmp_path):
    writer = FeatureStore(tmp_path, "view")
    features = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert writer.write(["a", "b", "a"], features, remember=False) == 2
    assert len(writer) == 0 and writer.n_shards == 0  # nothing per image in the writer
    reader = FeatureStore(tmp_path, "view")
    assert sorted(reader.ids()) == ["a", "b"] and reader.dim == 4
    np.testing.assert_array_equal(reader.get(["b", "a"]), features[[1, 0]])


def test_retried_batch_rewrites_the_same_shard(tmp_path):
    ids, feats = _ids(4), _features(4)
    FeatureStore(tmp_path, "k", dim=8).write(ids, feats)
    # A second process that did not see the first write produces the same file names.
    FeatureStore(tmp_path / "other", "k", dim=8).write(ids, feats)
    names = sorted(p.name for p in (tmp_path / "k").glob("shard-*"))
    assert names == sorted(p.name for p in (tmp_path / "other" / "k").glob("shard-*"))
    assert len(names) == 3  # one .npy, its .sha256 and its .ids.json


def test_id_in_two_shards_is_served_from_the_oldest(tmp_path):
    first = FeatureStore(tmp_path, "k", dim=8)
    second = FeatureStore(tmp_path, "k")  # opened before the first write: does not know it
    old, new = _features(2, seed=1), _features(2, seed=2)
    first.write(["a", "b"], old)
    os.utime(next((tmp_path / "k").glob("shard-*.ids.json")), ns=(1, 1))  # clearly older
    second.write(["b", "c"], new)
    reopened = FeatureStore(tmp_path, "k")
    assert len(reopened) == 3 and reopened.n_shards == 2
    np.testing.assert_array_equal(reopened.get(["a", "b", "c"]), np.stack([old[0], old[1], new[1]]))


def test_half_written_shard_is_ignored(tmp_path):
    store = FeatureStore(tmp_path, "k", dim=8)
    store.write(_ids(2), _features(2))
    folder = tmp_path / "k"
    # What a process killed mid-write leaves: a temp file and a features file without ids.
    (folder / ".shard-dead.npy.abc.tmp").write_bytes(b"\x93NUMPY partial")
    np.save(folder / "shard-orphan.npy", _features(3))
    reopened = FeatureStore(tmp_path, "k")
    assert len(reopened) == 2 and reopened.n_shards == 1


def test_write_leaves_no_temporary_files(tmp_path):
    store = FeatureStore(tmp_path, "k", dim=8)
    store.write(_ids(3), _features(3))
    store.record_failures({"bad": "cannot decode"})
    assert not list((tmp_path / "k").glob(".*"))


def test_failures_persist_and_are_not_missing(tmp_path):
    store = FeatureStore(tmp_path, "k", dim=8)
    store.record_failures({"bad1": "cannot decode: truncated", "bad2": "too many pixels"})
    store.record_failures({"bad1": "another reason"})  # first reason is kept
    reopened = FeatureStore(tmp_path, "k")
    assert reopened.failures() == {"bad1": "cannot decode: truncated", "bad2": "too many pixels"}
    assert reopened.missing(["bad1", "ok", "bad2"]) == ["ok"]
    assert reopened.missing(["bad1", "ok"], include_failed=True) == ["bad1", "ok"]
    with pytest.raises(KeyError, match="1 of 1 requested"):
        reopened.get(["bad1"])


def test_dim_is_set_by_first_write_and_checked(tmp_path):
    store = FeatureStore(tmp_path, "k")
    assert store.dim is None and len(store) == 0
    store.write(["a"], _features(1, dim=5))
    assert FeatureStore(tmp_path, "k").dim == 5
    with pytest.raises(ValueError, match=r"dim=6 does not match the stored feature dim=5"):
        FeatureStore(tmp_path, "k", dim=6)
    with pytest.raises(ValueError, match=r"features have dim=3, the store has dim=5"):
        store.write(["b"], _features(1, dim=3))
    with pytest.raises(
        ValueError, match=r"features.shape=\(2, 5\) should be \(len\(ids\)=1, dim\)"
    ):
        store.write(["b"], _features(2, dim=5))


def test_bad_spec_key_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="spec_key='../x' should be a plain"):
        FeatureStore(tmp_path, "../x")


def test_refresh_sees_other_writers(tmp_path):
    reader = FeatureStore(tmp_path, "k", dim=8)
    FeatureStore(tmp_path, "k").write(["a"], _features(1))
    assert "a" not in reader
    reader.refresh()
    assert "a" in reader


def test_empty_request(tmp_path):
    store = FeatureStore(tmp_path, "k", dim=8)
    assert store.get([]).shape == (0, 8)


def test_compact_merges_shards_into_one(tmp_path):
    store = FeatureStore(tmp_path, "k", dim=8)
    ids, feats = _ids(9), _features(9)
    for start in range(0, 9, 3):
        store.write(ids[start : start + 3], feats[start : start + 3])
    store.record_failures({"bad": "cannot decode"})
    assert store.compact() == 2
    assert store.n_shards == 1
    assert len(list((tmp_path / "k").glob("shard-*"))) == 3  # one .npy, its checksums, its ids
    reopened = FeatureStore(tmp_path, "k")
    np.testing.assert_array_equal(reopened.get(ids[::-1]), feats[::-1])
    assert reopened.failures() == {"bad": "cannot decode"}
    assert reopened.compact() == 0
    reopened.write(["new"], _features(1, seed=5))
    assert reopened.n_shards == 2 and len(reopened) == 10


# --- issue 18 item 9: damaged cache files are named, set aside and rebuilt ------------------


def _one_shard(tmp_path, n: int = 6, seed: int = 0):
    store = FeatureStore(tmp_path, "k", dim=8)
    ids, feats = _ids(n), _features(n, seed=seed)
    store.write(ids, feats)
    (npy,) = (tmp_path / "k").glob("shard-*.npy")
    return ids, feats, npy, npy.with_name(npy.name[: -len(".npy")] + ".ids.json")


def _overwrite_with_other_floats(npy):
    array = np.load(npy)
    np.save(npy, np.ascontiguousarray(array[::-1]) + 1.0)  # same shape and dtype


def _reorder_ids(npy, ids_path):
    ids_path.write_text(json.dumps(json.loads(ids_path.read_text())[::-1]))


def _truncate(npy, ids_path):
    npy.write_bytes(npy.read_bytes()[:-40])


def _garbage_ids(npy, ids_path):
    ids_path.write_bytes(b"\x00\x01 not json")


@pytest.mark.parametrize(
    "damage",
    [
        lambda npy, ids_path: _overwrite_with_other_floats(npy),
        _reorder_ids,
        _truncate,
        _garbage_ids,
    ],
    ids=["overwritten-floats", "reordered-ids", "truncated", "garbage-ids"],
)
def test_a_damaged_shard_is_named_set_aside_and_its_ids_missing_again(tmp_path, damage):
    from rayclust.views.store import CacheDamageWarning

    ids, feats, npy, ids_path = _one_shard(tmp_path)
    damage(npy, ids_path)
    with pytest.warns(CacheDamageWarning, match=re.escape(npy.name[: -len(".npy")])):
        store = FeatureStore(tmp_path, "k")
        todo = store.missing(ids)
    assert todo == ids  # every image of the shard is extracted again
    assert not npy.exists() and not ids_path.exists()
    assert npy.with_name(npy.name + ".damaged").exists()
    store.write(ids, feats)  # what the re-extraction does
    np.testing.assert_array_equal(FeatureStore(tmp_path, "k").get(ids), feats)


def test_get_never_serves_a_damaged_shard(tmp_path):
    from rayclust.views.store import CacheDamageWarning

    ids, _, npy, _ = _one_shard(tmp_path)
    store = FeatureStore(tmp_path, "k")  # opened before the damage
    _overwrite_with_other_floats(npy)
    with (
        pytest.warns(CacheDamageWarning, match="do not match their checksum"),
        pytest.raises(KeyError, match=r"6 of 6 requested ids have no stored features"),
    ):
        store.get(ids)


def test_a_garbage_meta_file_is_named_and_the_dim_taken_from_the_shards(tmp_path):
    from rayclust.views.store import CacheDamageWarning

    ids, feats, _, _ = _one_shard(tmp_path)
    (tmp_path / "k" / "meta.json").write_text("{dim: oops")
    with pytest.warns(CacheDamageWarning, match=r"meta\.json is damaged"):
        store = FeatureStore(tmp_path, "k")
    assert store.dim == 8
    np.testing.assert_array_equal(store.get(ids), feats)
    assert json.loads((tmp_path / "k" / "meta.json").read_text())["dim"] == 8


def test_a_garbage_failures_file_is_named_and_set_aside(tmp_path):
    from rayclust.views.store import CacheDamageWarning

    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "failures-x.json").write_text("[1, 2")
    with pytest.warns(CacheDamageWarning, match="failures-x.json"):
        store = FeatureStore(tmp_path, "k", dim=8)
    assert store.failures() == {}


def test_shards_without_checksums_still_read(tmp_path):
    """A cache written before checksums existed: checked by name and shape only."""
    ids, feats, npy, _ = _one_shard(tmp_path)
    npy.with_name(npy.name[: -len(".npy")] + ".sha256").unlink()
    np.testing.assert_array_equal(FeatureStore(tmp_path, "k").get(ids), feats)


def test_an_extraction_rebuilds_a_damaged_shard(tmp_path):
    """End to end: the shard a first extraction wrote is overwritten with other floats; the
    next extraction names it, sets it aside and computes its images again."""
    from PIL import Image

    from rayclust.config import ExtractionConfig
    from rayclust.images import ImageSet
    from rayclust.views import extract_views
    from rayclust.views.store import CacheDamageWarning

    rng = np.random.default_rng(0)
    for i in range(4):
        pixels = rng.integers(0, 255, (20, 20, 3)).astype("uint8")
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    images = ImageSet.from_folder(tmp_path, progress=False)
    config = ExtractionConfig(engine="local", cache_dir=str(tmp_path / "cache"), batch_size=8)
    (first,) = extract_views(images.records, "pixels16", config=config, progress=False).values()
    store = FeatureStore(tmp_path / "cache", first.spec_key)
    expected = store.get(images.image_ids)
    (npy,) = store.path.glob("shard-*.npy")
    _overwrite_with_other_floats(npy)
    with pytest.warns(CacheDamageWarning, match=npy.name):
        (again,) = extract_views(images.records, "pixels16", config=config, progress=False).values()
    assert again.n_cached == 0 and again.n_extracted == 4
    got = FeatureStore(tmp_path / "cache", first.spec_key).get(images.image_ids)
    np.testing.assert_array_equal(got, expected)


def test_a_rebuilt_shard_with_a_damaged_ones_name_is_read_again(tmp_path):
    from rayclust.views.store import CacheDamageWarning

    ids, feats, npy, _ = _one_shard(tmp_path)
    _overwrite_with_other_floats(npy)
    store = FeatureStore(tmp_path, "k")
    with pytest.warns(CacheDamageWarning):
        assert store.missing(ids) == ids
    store.write(ids, feats)  # the same batch again: the same shard name
    store.refresh()
    np.testing.assert_array_equal(store.get(ids), feats)
