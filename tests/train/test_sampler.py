"""Episodes: exact sizes, disjoint support and query, only the split's classes, seeded."""

import numpy as np
import pytest

from rayclust.train.sampler import EpisodeSampler

# Six classes of uneven size; the split uses four of them.
LABELS = np.repeat(np.arange(6), [12, 20, 9, 15, 30, 8])
SPLIT = [0, 2, 3, 4]


@pytest.mark.parametrize("n_way, k_shot, q_query", [(2, 1, 1), (3, 2, 5), (4, 4, 5)])
def test_episode_has_n_times_k_plus_q_images_from_the_split(n_way, k_shot, q_query):
    sampler = EpisodeSampler(LABELS, n_way, k_shot, q_query, classes=SPLIT, episodes=25, seed=3)
    episodes = list(sampler)
    assert len(episodes) == 25
    for episode in episodes:
        rows = np.concatenate([episode.support, episode.query])
        assert len(rows) == n_way * (k_shot + q_query) == sampler.images_per_episode
        assert len(np.unique(rows)) == len(rows)  # no image twice
        assert not set(episode.support) & set(episode.query)
        assert set(LABELS[rows]) == set(episode.classes)
        assert set(episode.classes) <= set(SPLIT)
        assert len(set(episode.classes)) == n_way
        # Episode labels index episode.classes, K (or Q) per class.
        assert np.array_equal(LABELS[episode.support], episode.classes[episode.support_labels])
        assert np.array_equal(LABELS[episode.query], episode.classes[episode.query_labels])
        assert np.array_equal(np.bincount(episode.support_labels), [k_shot] * n_way)
        assert np.array_equal(np.bincount(episode.query_labels), [q_query] * n_way)


def test_every_split_class_is_drawn_and_no_other():
    sampler = EpisodeSampler(LABELS, 2, 1, 1, classes=SPLIT, episodes=200, seed=0)
    drawn = {int(c) for episode in sampler for c in episode.classes}
    assert drawn == set(SPLIT)


def test_episodes_are_a_function_of_seed_and_index():
    first = EpisodeSampler(LABELS, 3, 2, 3, classes=SPLIT, seed=7)
    again = EpisodeSampler(LABELS, 3, 2, 3, classes=SPLIT, seed=7)
    other = EpisodeSampler(LABELS, 3, 2, 3, classes=SPLIT, seed=8)
    for index in (0, 5, 123):
        assert np.array_equal(first.episode(index).support, again.episode(index).support)
        assert np.array_equal(first.episode(index).query, again.episode(index).query)
    assert any(not np.array_equal(first.episode(i).query, other.episode(i).query) for i in range(5))
    assert not np.array_equal(first.episode(0).query, first.episode(1).query)


@pytest.mark.parametrize(
    "params, message",
    [
        (
            dict(n_way=5, k_shot=2, q_query=2, classes=SPLIT),
            r"the split has 4 classes, fewer than n_way=5",
        ),
        (
            dict(n_way=2, k_shot=5, q_query=5, classes=[0, 5]),
            r"class 5 has 8 images, fewer than k_shot \+ q_query = 5 \+ 5",
        ),
        (dict(n_way=1, k_shot=2, q_query=2), r"n_way=1 should be >= 2"),
        (dict(n_way=3, k_shot=0, q_query=2), r"k_shot=0 should be >= 1"),
    ],
)
def test_invalid_episode_shapes(params, message):
    with pytest.raises(ValueError, match=message):
        EpisodeSampler(LABELS, **params)
