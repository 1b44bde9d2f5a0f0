"""N-way K-shot Q-query episodes drawn from one class split.

Episode ``i`` of a sampler is a pure function of ``(seed, i)``: workers can each take their
own share of an epoch's episodes, and a run resumed from a checkpoint draws exactly the
episodes an undisturbed run would have drawn.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Episode:
    classes: np.ndarray  # (n_way,) dataset class ids, in episode-label order
    support: np.ndarray  # (n_way * k_shot,) dataset row indices, grouped by class
    query: np.ndarray  # (n_way * q_query,) dataset row indices, grouped by class
    support_labels: np.ndarray  # (n_way * k_shot,) episode labels 0..n_way-1
    query_labels: np.ndarray  # (n_way * q_query,) episode labels 0..n_way-1

    @property
    def n_way(self) -> int:
        return int(self.classes.shape[0])


class EpisodeSampler:
    """Draw episodes from the rows of ``labels`` whose class is in ``classes``.

    Parameters
    ----------
    labels : class id of every row of the dataset.
    n_way, k_shot, q_query : classes per episode, support and query images per class.
    classes : the split's class ids (default: every class in ``labels``); rows of other
        classes are never drawn.
    episodes : how many episodes one pass over the sampler yields.
    seed : episodes are drawn from ``np.random.default_rng([seed, i])``.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        n_way: int,
        k_shot: int,
        q_query: int,
        classes: Sequence[int] | None = None,
        episodes: int = 100,
        seed: int = 0,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels should be 1-D; got labels.ndim={labels.ndim}")
        for name, value, low in (
            ("n_way", n_way, 2),
            ("k_shot", k_shot, 1),
            ("q_query", q_query, 1),
        ):
            if value < low:
                raise ValueError(f"{name}={value} should be >= {low}")
        if episodes < 0:
            raise ValueError(f"episodes={episodes} should be >= 0")
        classes = np.unique(labels) if classes is None else np.asarray(sorted(set(classes)))
        if len(classes) < n_way:
            raise ValueError(
                f"the split has {len(classes)} classes, fewer than n_way={n_way}; "
                "lower n_way or name more classes"
            )
        self._rows_by_class = {}
        for class_id in classes:
            rows = np.flatnonzero(labels == class_id)
            if len(rows) < k_shot + q_query:
                raise ValueError(
                    f"class {class_id} has {len(rows)} images, fewer than "
                    f"k_shot + q_query = {k_shot} + {q_query}; lower them or drop the class"
                )
            self._rows_by_class[int(class_id)] = rows
        self.classes = classes
        self.n_way, self.k_shot, self.q_query = n_way, k_shot, q_query
        self.episodes = episodes
        self.seed = seed

    @property
    def images_per_episode(self) -> int:
        return self.n_way * (self.k_shot + self.q_query)

    def __len__(self) -> int:
        return self.episodes

    def __iter__(self) -> Iterator[Episode]:
        return (self.episode(i) for i in range(self.episodes))

    def episode(self, index: int) -> Episode:
        rng = np.random.default_rng([self.seed, index])
        classes = rng.choice(self.classes, size=self.n_way, replace=False)
        support, query = [], []
        for class_id in classes:
            rows = rng.choice(
                self._rows_by_class[int(class_id)], size=self.k_shot + self.q_query, replace=False
            )
            support.append(rows[: self.k_shot])
            query.append(rows[self.k_shot :])
        way = np.arange(self.n_way)
        return Episode(
            classes=classes,
            support=np.concatenate(support),
            query=np.concatenate(query),
            support_labels=np.repeat(way, self.k_shot),
            query_labels=np.repeat(way, self.q_query),
        )
