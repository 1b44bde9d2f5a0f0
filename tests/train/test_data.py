import numpy as np
import pytest
import torch

from rayclust.config import ConfigError
from rayclust.train.data import ImageBatcher, load_splits


@pytest.fixture(scope="module")
def splits(sample_classes):
    return load_splits(
        str(sample_classes.source), {"train": sample_classes.train, "val": sample_classes.val}
    )


def test_splits_hold_only_their_classes(splits, sample_classes):
    train, val = splits["train"], splits["val"]
    assert train.class_names == sample_classes.train
    assert set(train.labels) == {0, 1, 2}
    for path, label in zip(train.paths, train.labels, strict=True):
        assert f"/{train.class_names[label]}/" in path
    assert not set(train.paths) & set(val.paths)
    assert sum(train.class_counts().values()) == len(train)


def test_unknown_class_lists_the_classes_there(sample_classes):
    with pytest.raises(
        ConfigError,
        match=r"data\.train names \['zebras'\], not found in .*classes there \(images\): ",
    ):
        load_splits(str(sample_classes.source), {"train": ["zebras"]})


def test_batches_are_normalised_squares_and_flips_are_seeded(splits):
    train = splits["train"]
    batcher = ImageBatcher(train.paths, 48, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    rows = [0, 1, 2, 3, 4, 5]
    plain = batcher.batch(rows)
    assert plain.shape == (6, 3, 48, 48) and plain.dtype == torch.float32
    assert plain.min() >= -2.0 - 1e-6 and plain.max() <= 2.0 + 1e-6  # (x - .5) / .25, x in [0, 1]
    first = batcher.batch(rows, torch.Generator().manual_seed(1))
    again = batcher.batch(rows, torch.Generator().manual_seed(1))
    assert torch.equal(first, again)
    mirrored = torch.rand(6, generator=torch.Generator().manual_seed(1)) < 0.5
    assert 0 < int(mirrored.sum()) < 6  # this seed mirrors some images and keeps others
    for i in range(6):
        assert torch.equal(first[i], plain[i].flip(-1) if mirrored[i] else plain[i])
    assert len(batcher._cache) == 6  # decoded once, memoised


def test_batcher_rejects_bad_crop():
    with pytest.raises(ValueError, match=r"crop_pct=1\.5 should be in \(0, 1\]"):
        ImageBatcher(["x.png"], 32, (0, 0, 0), (1, 1, 1), crop_pct=1.5)


def test_labels_are_aligned_with_paths(splits):
    train = splits["train"]
    assert len(train.paths) == len(train.labels)
    assert np.all(np.diff(train.labels) >= 0)  # grouped by class id
