"""External and internal clustering scores, and their AVG(SD) over seeds.

External scores compare a partition with ground-truth classes:

- ``acc``: clustering accuracy, the share of samples whose cluster is mapped to their class
  by the best one-to-one cluster -> class matching (Hungarian algorithm). With more clusters
  than classes the surplus clusters stay unmatched and count as errors, and vice versa.
- ``nmi``: normalised mutual information (arithmetic mean normalisation, scikit-learn's
  default and the one most clustering papers use).
- ``ami``: mutual information adjusted for chance (arithmetic mean normalisation).
- ``ari``: adjusted Rand index.
- ``pur``: purity, each cluster counted as its majority class (many clusters may share one
  class, so purity is never below ACC and reaches 1 when every sample is its own cluster).
- ``fmi``: Fowlkes-Mallows index, geometric mean of pairwise precision and recall.

Guerin et al.'s (paper 001) local and mixed forms: ``pointwise_fowlkes_mallows`` (FM_i, per
sample), ``class_fowlkes_mallows`` (FM_Ck, per true class) and ``mix_score`` (MIX, the mean
of NMI, PUR and ACC).

Internal scores need no labels (``internal_scores``): silhouette on a random sample,
Calinski-Harabasz and Davies-Bouldin on all rows.

Labels are any integers; ``-1`` has no special meaning here (it is one more cluster).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm
from sklearn.metrics.cluster import contingency_matrix

EXTERNAL_METRICS: tuple[str, ...] = ("acc", "nmi", "ami", "ari", "pur", "fmi")
INTERNAL_METRICS: tuple[str, ...] = ("silhouette", "calinski_harabasz", "davies_bouldin")
# Every score here is better when higher except these (a summary prints which way each goes).
LOWER_IS_BETTER: frozenset[str] = frozenset({"davies_bouldin"})


def better(metric: str) -> Literal["higher", "lower"]:
    """Which way ``metric`` improves: "higher" or "lower" (is better)."""
    return "lower" if metric in LOWER_IS_BETTER else "higher"


def _check_label_pair(labels_true, labels_pred) -> tuple[np.ndarray, np.ndarray]:
    labels_true = np.asarray(labels_true)
    labels_pred = np.asarray(labels_pred)
    if labels_true.ndim != 1 or labels_pred.ndim != 1:
        raise ValueError(
            f"labels should be 1-D; got labels_true.ndim={labels_true.ndim}, "
            f"labels_pred.ndim={labels_pred.ndim}"
        )
    if labels_true.shape[0] != labels_pred.shape[0]:
        raise ValueError(
            f"len(labels_true)={labels_true.shape[0]} should equal "
            f"len(labels_pred)={labels_pred.shape[0]}"
        )
    if labels_true.shape[0] == 0:
        raise ValueError("labels_true and labels_pred are empty; need at least one sample")
    return labels_true, labels_pred


def _contingency(labels_true: np.ndarray, labels_pred: np.ndarray) -> np.ndarray:
    # Rows are classes, columns clusters; sparse keeps 1M x (1000 x 1000) cheap.
    return contingency_matrix(labels_true, labels_pred, sparse=True).toarray()


def clustering_accuracy(labels_true, labels_pred) -> float:
    """Best one-to-one matching accuracy; works when #clusters != #classes."""
    labels_true, labels_pred = _check_label_pair(labels_true, labels_pred)
    counts = _contingency(labels_true, labels_pred)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / labels_true.shape[0])


def purity(labels_true, labels_pred) -> float:
    """Share of samples that belong to the majority class of their cluster."""
    labels_true, labels_pred = _check_label_pair(labels_true, labels_pred)
    counts = _contingency(labels_true, labels_pred)
    return float(counts.max(axis=0).sum() / labels_true.shape[0])


def external_scores(labels_true, labels_pred) -> dict[str, float]:
    """All external scores of ``labels_pred`` against classes ``labels_true``.

    Returns ``{"acc", "nmi", "ami", "ari", "pur", "fmi"}`` as plain floats, each 1.0 for a
    perfect partition up to relabelling.
    """
    labels_true, labels_pred = _check_label_pair(labels_true, labels_pred)
    counts = _contingency(labels_true, labels_pred)
    n = labels_true.shape[0]
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {
        "acc": float(counts[rows, cols].sum() / n),
        "nmi": float(skm.normalized_mutual_info_score(labels_true, labels_pred)),
        "ami": float(skm.adjusted_mutual_info_score(labels_true, labels_pred)),
        "ari": float(skm.adjusted_rand_score(labels_true, labels_pred)),
        "pur": float(counts.max(axis=0).sum() / n),
        "fmi": float(skm.fowlkes_mallows_score(labels_true, labels_pred)),
    }


def pointwise_fowlkes_mallows(labels_true, labels_pred) -> np.ndarray:
    """``FM_i`` of every sample (Guerin et al., paper 001, Eq. 7): the Fowlkes-Mallows score
    of the pairs that contain sample i.

    ``TP_i`` counts the other samples sharing both i's cluster and i's class, ``TP_i + FP_i``
    those sharing its cluster, ``TP_i + FN_i`` those sharing its class:
    ``FM_i = TP_i / sqrt((TP_i + FP_i) (TP_i + FN_i))``, 0 when i is alone in its cluster or
    its class (as scikit-learn's FMI is 0 without true-positive pairs).
    """
    labels_true, labels_pred = _check_label_pair(labels_true, labels_pred)
    _, true_idx = np.unique(labels_true, return_inverse=True)
    _, pred_idx = np.unique(labels_pred, return_inverse=True)
    counts = _contingency(true_idx, pred_idx)
    tp = counts[true_idx, pred_idx] - 1.0
    same_cluster = counts.sum(axis=0)[pred_idx] - 1.0
    same_class = counts.sum(axis=1)[true_idx] - 1.0
    denom = np.sqrt(same_cluster * same_class)
    return np.divide(tp, denom, out=np.zeros_like(tp), where=denom > 0)


def class_fowlkes_mallows(labels_true, labels_pred) -> dict[str, float]:
    """``FM_Ck`` (paper 001, Eq. 8): the mean ``FM_i`` over the samples of each true class
    ``k``; keys are the class labels as strings, in sorted order."""
    labels_true, labels_pred = _check_label_pair(labels_true, labels_pred)
    fm = pointwise_fowlkes_mallows(labels_true, labels_pred)
    return {str(k): float(fm[labels_true == k].mean()) for k in np.unique(labels_true)}


def mix_score(scores: Mapping[str, float]) -> float:
    """MIX = (NMI + PUR + ACC) / 3 (paper 001, Section 6.2), from ``external_scores`` output."""
    return (scores["nmi"] + scores["pur"] + scores["acc"]) / 3.0


def check_rows_and_labels(
    rows_shape: Sequence[int], labels_shape: Sequence[int], rows_name: str = "X"
) -> None:
    """Refuse anything but a 2-D ``(n, d)`` array of rows with one label per row.

    Takes shapes, so numpy arrays and torch tensors are checked alike; the messages name
    ``rows_name`` and both lengths.
    """
    if len(rows_shape) != 2:
        raise ValueError(
            f"{rows_name} should be 2-D (n_samples, n_features); got {rows_name}.ndim="
            f"{len(rows_shape)}"
        )
    n_labels = labels_shape[0] if len(labels_shape) else 0
    if len(labels_shape) != 1 or n_labels != rows_shape[0]:
        raise ValueError(
            f"labels should be 1-D with len(labels)={n_labels} equal to "
            f"{rows_name}.shape[0]={rows_shape[0]}"
        )


def internal_scores(
    X,
    labels,
    sample_size: int | None = 10_000,
    random_state: int | None = 0,
    metric: Literal["cosine", "euclidean"] = "cosine",
) -> dict[str, float]:
    """Label-free scores of a partition of the rows of ``X``.

    - ``silhouette`` (higher is better, in [-1, 1]) on a random sample of ``sample_size``
      rows (``None``: all rows; its cost is quadratic in the sample). ``metric="cosine"`` is
      the default because deep features are compared by angle (the pipeline L2-normalises
      them, where cosine and euclidean rank pairs the same way).
    - ``calinski_harabasz`` (higher is better) and ``davies_bouldin`` (lower is better) on all
      rows; both are linear in n and always euclidean (they are defined with centroids).

    A partition with a single cluster, or with as many clusters as rows, has no defined
    score: those come back as NaN instead of raising. The silhouette is NaN as well when the
    sample happens to hold a single cluster.
    """
    X = np.asarray(X)
    labels = np.asarray(labels)
    check_rows_and_labels(X.shape, labels.shape)
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric={metric!r} should be 'cosine' or 'euclidean'")
    if sample_size is not None and sample_size < 2:
        raise ValueError(f"sample_size={sample_size} should be >= 2 or None")

    nan = float("nan")
    scores = {"silhouette": nan, "calinski_harabasz": nan, "davies_bouldin": nan}
    n_samples = X.shape[0]
    n_clusters = np.unique(labels).shape[0]
    if not 2 <= n_clusters <= n_samples - 1:
        return scores

    if sample_size is not None and sample_size < n_samples:
        rng = np.random.default_rng(random_state)
        rows = np.sort(rng.choice(n_samples, size=sample_size, replace=False))
        X_sample, labels_sample = X[rows], labels[rows]
    else:
        X_sample, labels_sample = X, labels
    n_sample_clusters = np.unique(labels_sample).shape[0]
    if 2 <= n_sample_clusters <= labels_sample.shape[0] - 1:
        scores["silhouette"] = float(skm.silhouette_score(X_sample, labels_sample, metric=metric))
    scores["calinski_harabasz"] = float(skm.calinski_harabasz_score(X, labels))
    scores["davies_bouldin"] = float(skm.davies_bouldin_score(X, labels))
    return scores


def summarize(score_dicts: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """AVG and SD of each metric over runs (seeds): ``{metric: {"mean", "std", "n"}}``.

    ``std`` is the population standard deviation (``ddof=0``, numpy's default, which is what
    the papers' evaluation code reports): the runs are all the runs, not a sample from which
    to estimate a spread, and a single run gets ``std=0`` rather than NaN. NaN scores (an
    undefined silhouette, say) are left out of that metric; ``n`` counts the runs used. A
    metric missing from some runs is summarised over the runs that have it.
    """
    values: dict[str, list[float]] = {}
    for scores in score_dicts:
        for name, value in scores.items():
            values.setdefault(name, []).append(float(value))
    if not values:
        raise ValueError("summarize() got no score dicts; need at least one run")
    summary: dict[str, dict[str, float]] = {}
    for name, series in values.items():
        finite = np.asarray([v for v in series if not math.isnan(v)], dtype=np.float64)
        if finite.size == 0:
            summary[name] = {"mean": float("nan"), "std": float("nan"), "n": 0}
        else:
            summary[name] = {
                "mean": float(finite.mean()),
                "std": float(finite.std(ddof=0)),
                "n": int(finite.size),
            }
    return summary


def format_avg_sd(mean: float, std: float, digits: int = 3) -> str:
    """``0.812 (0.013)``, the AVG(SD) cell of the papers' tables."""
    if digits < 0:
        raise ValueError(f"digits={digits} should be >= 0")
    return f"{mean:.{digits}f} ({std:.{digits}f})"


def format_summary(
    summary: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] | None = None,
    digits: int = 3,
) -> dict[str, str]:
    """``summarize()`` output as ``{metric: "0.812 (0.013)"}``, in ``metrics`` order if given."""
    names = list(summary) if metrics is None else list(metrics)
    missing = [name for name in names if name not in summary]
    if missing:
        raise KeyError(f"metrics {missing} not in summary; it has {sorted(summary)}")
    return {
        name: format_avg_sd(summary[name]["mean"], summary[name]["std"], digits) for name in names
    }
