"""K-means with the scikit-learn API, fast on CPU and GPU, streaming over memory-mapped files.

How a fit runs (backends ``"faiss"`` and ``"torch"``; ``"sklearn"`` and ``"cuml"`` hand the
whole fit to those libraries). The data is seen through the
:class:`~rayclust.cluster._backend.FeatureData` interface (chunked nearest-centroid search +
per-cluster sums), so the same loop runs on numpy, memmaps, torch CPU/CUDA tensors.

1. Coarse to fine: nested random subsets of the rows, the first with ``sample_size`` rows
   (default ``max(10_000, 200 * k)``), each next one 2.5 times larger, the last the full data
   (intermediate stages are held in memory, at most 1 GiB each).
2. On the first stage: greedy k-means++ on a seeding subset (40 rows per cluster), then
   Lloyd; with ``n_init`` restarts the lowest inertia goes on (see ``n_init`` for "auto").
3. Every later stage continues Lloyd from the previous stage's centres. Most iterations thus run
   on small subsets; the full data (possibly a memmap larger than memory, read chunk by chunk)
   sees only the last few. ``algorithm="minibatch"`` replaces the full-data Lloyd by chunk-wise
   mini-batch passes.
4. Lloyd steps are over-relaxed (``relaxation``, see :func:`lloyd`): on image features the
   same inertia in about 40% fewer passes over the data.
5. A stage stops on scikit-learn's rule (labels unchanged, or total squared centre shift <=
   ``tol`` x mean feature variance) or when a step lowers the inertia by less than
   ``inertia_tol`` (relative; 0 turns this off; subset stages use twice it). ``labels_`` and
   ``inertia_`` are consistent with ``cluster_centers_``.

Empty clusters are re-seeded with the points farthest from their centres.

``n_clusters="auto"`` picks k from ``k_range`` by silhouette (on a sample) or by stability
across seeds and subsamples, and records the curve in ``k_selection_``.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import KW_ONLY, dataclass
from typing import Any

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
)
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._backend import (
    Assignment,
    FeatureData,
    HostData,
    backend_device,
    make_feature_data,
    resolve_backend,
)
from ._lloyd import kmeans_plusplus, lloyd, mean_variance, minibatch_passes
from ._params import CheckedInFit, Int, OneOf, Real, check_params, estimator_parameters
from ._validation import (
    FewDistinctPointsWarning,
    check_features,
    check_k_range,
    check_n_features,
    is_gpu_array,
    to_numpy,
)
from .choose_k import KSelection, select_best

logger = logging.getLogger("rayclust")

ALGORITHMS = ("lloyd", "minibatch")
# k-means++ runs on this many sample rows per cluster (at least 4000): seeding needs a few
# dozen points per cluster; Lloyd on the larger stages does the rest.
_SEEDING_ROWS_PER_CLUSTER = 40
# Coarse-to-fine stages: the first has this many rows per cluster (at least _MIN_FIRST_STAGE),
# each next one _STAGE_GROWTH times more, none larger than _MAX_STAGE_BYTES (they are copied),
# and the last is the full data.
_FIRST_STAGE_ROWS_PER_CLUSTER = 200
_MIN_FIRST_STAGE = 10_000
_STAGE_GROWTH = 2.5
_MAX_STAGE_BYTES = 1 << 30
# Subset stages stop at a looser relative inertia improvement (inertia_tol times this).
_SUBSET_STAGE_LOOSENING = 2.0
# n_init="auto" with k-means++: one run, and _AUTO_RESTARTS in all when the first one's
# first stage settled within _QUICK_STEPS steps. Quick convergence means separated clusters,
# where a seeding that puts two centres in one cluster costs percents of inertia (blobs:
# +2.7% for one seed in three) and a restart costs little. Without such structure (image
# features: a dozen steps or more), optima differ by tenths of a percent and a restart costs
# as much as the rest of the fit. Data of at most _MIN_FIRST_STAGE rows always gets the
# restarts (they cost milliseconds; digits: ARI 0.662 with them, 0.636 without), and as
# many as scikit-learn's n_init=10 (issue 17: with 3 the default fell below a plain
# scikit-learn script on small collections).
_QUICK_STEPS = 6
_AUTO_RESTARTS = 3
_SMALL_DATA_RESTARTS = 10
K_CRITERIA = ("silhouette", "stability")

_PARAMETER_RULES = {
    "n_clusters": (CheckedInFit("an int >= 1"), "auto"),
    "init": (OneOf(("k-means++", "random")), CheckedInFit("an array (n_clusters, n_features)")),
    "n_init": ("auto", Int(1)),
    "max_iter": Int(1),
    "tol": Real(0),
    "inertia_tol": Real(0, 1),
    "relaxation": Real(1, 2),
    "algorithm": OneOf(ALGORITHMS),
    "sample_size": (Int(1), None),
    "chunk_rows": Int(1),
    "k_criterion": OneOf(K_CRITERIA),
}


@dataclass
class _FitResult:
    centers: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    converged: bool


# ---------------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------------


@estimator_parameters
class KMeans(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator):
    """K-means clustering with a scikit-learn API and pluggable backends.

    Parameters
    ----------
    n_clusters : int or "auto", default=8
        Number of clusters; ``"auto"`` chooses it from ``k_range`` by ``k_criterion``.
    init : {"k-means++", "random"} or array of shape (n_clusters, n_features)
    n_init : int or "auto", default="auto"
        Restarts, each on the first (smallest) stage; the best by inertia goes on to the larger
        stages. "auto": 10 for random, 1 for an explicit array; for k-means++ 10 (as
        scikit-learn's ``n_init=10``) on data of at most 10,000 rows, 3 when the first run
        settles within 6 steps (separated clusters, where a restart is cheap and can recover
        a cluster the seeding missed), else 1. The run with the lowest inertia is kept.
    max_iter : int, default=300
        Lloyd iterations per stage, or passes over the data for ``algorithm="minibatch"``.
    tol : float, default=1e-4
        Stop a stage when the total squared centre shift is below
        ``tol * mean feature variance`` (scikit-learn's rule).
    inertia_tol : float, default=1e-3
        Also stop a stage when a step lowers the inertia by less than this fraction
        (Lloyd's long tail of tiny improvements); 0 keeps only scikit-learn's rule.
        Subset stages stop at twice this.
    relaxation : float, default=1.8
        Over-relaxed Lloyd steps ``C + relaxation * (means - C)``, kept only when they lower
        the inertia (see :func:`lloyd`); 1 gives plain Lloyd. Values >= 2 overshoot.
    algorithm : {"lloyd", "minibatch"}, default="lloyd"
        How the full data refines the previous stage: full-batch Lloyd passes, or chunk-wise
        mini-batch updates (one read of the data per pass; for arrays far larger than memory).
    sample_size : int or None, default=None
        Rows of the first stage (seeding and restarts); None: ``max(10_000, 100 * n_clusters)``.
    chunk_rows : int, default=65536
        Rows per chunk when scanning the full data (bounds memory for memmaps).
    backend : {"auto", "sklearn", "faiss", "cuml", "torch"}, default="auto"
    k_range : sequence of int or None, default=None
        Candidates for ``n_clusters="auto"``; None: 2..min(20, n_samples - 1).
    k_criterion : {"silhouette", "stability"}, default="silhouette"
        Silhouette on ``k_sample_size`` rows, or the mean ARI between fits with different
        seeds (higher is more stable).
    k_sample_size : int, default=5000
        Rows used to score each candidate k.
    random_state : int, RandomState or None, default=None
    verbose : bool, default=False
        Log per-stage timings at INFO level (``logging.getLogger("rayclust")``).

    Attributes
    ----------
    cluster_centers_ : ndarray (n_clusters, n_features), float32
    labels_ : ndarray (n_samples,), int64
    inertia_ : float
        Sum of squared distances of the samples to their closest centre.
    n_iter_ : int
        Lloyd iterations (or mini-batch passes) on the full data.
    n_clusters_ : int
        The number of clusters used (the chosen one with ``n_clusters="auto"``).
    backend_ : str
        The backend that ran the fit, e.g. "faiss".
    device_ : str
        "cpu" or "cuda".
    k_selection_ : KSelection
        With ``n_clusters="auto"``: criterion, candidate ks, their scores and the chosen k
        (``k_selection_.to_dict()`` for logging).
    n_features_in_ : int
    """

    n_clusters: int | str = 8
    _: KW_ONLY
    init: str | np.ndarray = "k-means++"
    n_init: int | str = "auto"
    max_iter: int = 300
    tol: float = 1e-4
    inertia_tol: float = 1e-3
    relaxation: float = 1.8
    algorithm: str = "lloyd"
    sample_size: int | None = None
    chunk_rows: int = 65_536
    backend: str = "auto"
    k_range: list[int] | None = None
    k_criterion: str = "silhouette"
    k_sample_size: int = 5000
    random_state: Any = None
    verbose: bool = False

    # -- parameters -----------------------------------------------------------------------

    def _n_init(self) -> int:
        """Runs to start with; ``n_init="auto"`` with k-means++ may add restarts later."""
        if self.n_init != "auto":
            return int(self.n_init)
        if not isinstance(self.init, str):
            return 1
        return 1 if self.init == "k-means++" else 10

    def _auto_restarts(self) -> bool:
        return self.n_init == "auto" and isinstance(self.init, str) and self.init == "k-means++"

    def _explicit_init(self, n_clusters: int, n_features: int) -> np.ndarray | None:
        if isinstance(self.init, str):
            return None
        init = np.asarray(to_numpy(self.init), dtype=np.float32)
        if init.shape != (n_clusters, n_features):
            raise ValueError(
                f"init has shape {init.shape}; it should be (n_clusters, n_features) = "
                f"({n_clusters}, {n_features})"
            )
        if not np.isfinite(init).all():
            raise ValueError("init contains NaN or inf")
        return init

    # -- fitting --------------------------------------------------------------------------

    def fit(self, X: Any, y: Any = None) -> KMeans:
        """Compute K-means clustering of ``X`` (n_samples, n_features).

        ``X`` may be a numpy array, a memory-mapped file (read in chunks), a torch tensor or a
        CuPy array (kept on its GPU for GPU backends). ``y`` is ignored.
        """
        check_params(self, _PARAMETER_RULES)
        auto_k = self.n_clusters == "auto"
        if isinstance(X, FeatureData):
            return self._fit_feature_data(X)
        X = check_features(
            X,
            n_clusters=None if auto_k else self.n_clusters,
            keep_on_device=True,
            chunk_rows=self.chunk_rows,
        )
        n_samples, n_features = X.shape
        self.backend_ = resolve_backend(self.backend, X, purpose="KMeans")
        self.device_ = backend_device(self.backend_, X)
        rng = check_random_state(self.random_state)

        if auto_k:
            n_clusters = self._select_k(X, rng)
        else:
            n_clusters = int(self.n_clusters)
            if hasattr(self, "k_selection_"):
                del self.k_selection_
        init = self._explicit_init(n_clusters, n_features)

        started = time.perf_counter()
        if self.backend_ == "sklearn":
            result = self._fit_sklearn(to_numpy(X), n_clusters, init, rng)
        elif self.backend_ == "cuml":
            result = self._fit_cuml(X, n_clusters, init, rng)
        else:
            data = make_feature_data(X, self.backend_, chunk_rows=self.chunk_rows)
            result = self._fit_coarse_to_fine(data, n_clusters, init, rng)

        return self._set_result(result, n_clusters, n_samples, n_features, started)

    def _fit_feature_data(self, data: FeatureData) -> KMeans:
        """Fit on data already behind the FeatureData interface (e.g. sharded over Ray actors,
        :mod:`rayclust.cluster.distributed`): the coarse-to-fine fit, with the subset stages
        on this process's backend."""
        if self.n_clusters == "auto" or self.algorithm != "lloyd":
            raise ValueError(
                "sharded data takes an int n_clusters and algorithm='lloyd'; "
                f"got n_clusters={self.n_clusters!r}, algorithm={self.algorithm!r}"
            )
        n_clusters = int(self.n_clusters)
        n_samples, n_features = data.count(), data.dim()
        if n_clusters > n_samples:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={n_clusters}")
        self.backend_ = resolve_backend(
            self.backend, supported=("faiss", "torch"), purpose="KMeans subset stages"
        )
        self.device_ = backend_device(self.backend_)
        init = self._explicit_init(n_clusters, n_features)
        started = time.perf_counter()
        result = self._fit_coarse_to_fine(
            data, n_clusters, init, check_random_state(self.random_state)
        )
        return self._set_result(result, n_clusters, n_samples, n_features, started)

    def _set_result(
        self, result: _FitResult, n_clusters: int, n_samples: int, n_features: int, started: float
    ) -> KMeans:
        distinct = int(np.count_nonzero(np.bincount(result.labels, minlength=n_clusters)))
        if distinct < n_clusters:
            warnings.warn(
                f"Number of distinct clusters ({distinct}) found smaller than "
                f"n_clusters ({n_clusters}); the data may hold fewer distinct points",
                FewDistinctPointsWarning,
                stacklevel=2,
            )
        self.cluster_centers_ = result.centers.astype(np.float32, copy=False)
        self.labels_ = result.labels.astype(np.int64, copy=False)
        self.inertia_ = float(result.inertia)
        self.n_iter_ = int(result.n_iter)
        self.n_clusters_ = n_clusters
        self.n_features_in_ = n_features
        self._n_features_out = n_clusters
        logger.debug(
            "KMeans: k=%d on %d x %d with backend %s (%s): inertia %.6g, %d iterations, %.2f s",
            n_clusters,
            n_samples,
            n_features,
            self.backend_,
            self.device_,
            self.inertia_,
            self.n_iter_,
            time.perf_counter() - started,
        )
        return self

    def _stage_sizes(self, n_samples: int, n_clusters: int, row_bytes: int) -> list[int]:
        """Rows of each coarse-to-fine stage, ending with all ``n_samples`` rows."""
        first = self.sample_size or max(
            _MIN_FIRST_STAGE, _FIRST_STAGE_ROWS_PER_CLUSTER * n_clusters
        )
        largest = max(first, _MAX_STAGE_BYTES // row_bytes)  # stages are copied into memory
        sizes = []
        size = first
        while size < n_samples and size <= largest:
            sizes.append(int(size))
            size = int(size * _STAGE_GROWTH)
        return [*sizes, n_samples]

    def _seeds(self, rows: np.ndarray, n_clusters: int, init: np.ndarray | None, rng) -> np.ndarray:
        if init is not None:
            return init
        if self.init == "random":
            return rows[rng.choice(rows.shape[0], size=n_clusters, replace=False)]
        seeding_rows = min(rows.shape[0], max(4000, _SEEDING_ROWS_PER_CLUSTER * n_clusters))
        seeding = rows[rng.choice(rows.shape[0], size=seeding_rows, replace=False)]
        return kmeans_plusplus(seeding, n_clusters, random_state=rng)[0]

    def _fit_coarse_to_fine(
        self, data: FeatureData, n_clusters: int, init: np.ndarray | None, rng
    ) -> _FitResult:
        n_samples = data.count()
        sizes = self._stage_sizes(n_samples, n_clusters, 4 * data.dim())
        # Nested random subsets: each stage's rows include the previous stage's.
        order = rng.permutation(n_samples) if len(sizes) > 1 else np.arange(n_samples)
        first_rows = data.get_subset(np.sort(order[: sizes[0]]))
        tol = self.tol * mean_variance(first_rows[:100_000])

        def stage_inertia_tol(size: int) -> float:
            # Subset stages only carry the centres towards the full-data optimum, which moves
            # them again anyway: polishing a subset optimum is wasted work.
            if size == n_samples:
                return self.inertia_tol
            return self.inertia_tol * _SUBSET_STAGE_LOOSENING

        def stage_data(size: int) -> FeatureData:
            if size == n_samples:
                return data
            rows = first_rows if size == sizes[0] else data.get_subset(np.sort(order[:size]))
            return make_feature_data(rows, self.backend_, chunk_rows=self.chunk_rows)

        t0 = time.perf_counter()
        first = stage_data(sizes[0])
        best = None
        n_runs = self._n_init()
        run = 0
        while run < n_runs:
            seeds = self._seeds(first_rows, n_clusters, init, rng)
            result = lloyd(
                first,
                seeds,
                max_iter=self.max_iter,
                tol=tol,
                inertia_tol=stage_inertia_tol(sizes[0]),
                relaxation=self.relaxation,
            )
            run += 1
            if best is None or result[1].inertia < best[1].inertia:
                best = result
            if self._auto_restarts() and run == 1:
                if n_samples <= _MIN_FIRST_STAGE:
                    n_runs = _SMALL_DATA_RESTARTS  # small data: restarts cost milliseconds
                elif result[2] <= _QUICK_STEPS:
                    n_runs = _AUTO_RESTARTS  # separated clusters: restarts are cheap
        centers, assignment, n_iter, converged = best
        self._log("stage 1: %d restart(s) on %d rows, %.2f s", run, sizes[0], t0)

        for size in sizes[1:]:
            if n_iter <= 1 and size != n_samples:
                continue  # the last stage did not move the centres: go straight to all rows
            t0 = time.perf_counter()
            stage = stage_data(size)
            if size == n_samples and self.algorithm == "minibatch":
                prior = np.bincount(assignment.labels, minlength=n_clusters)
                centers, n_iter, converged = minibatch_passes(
                    stage, centers, prior, max_passes=self.max_iter, tol=tol, rng=rng
                )
                assignment = stage.assign(centers, accumulate=False)
            else:
                centers, assignment, n_iter, converged = lloyd(
                    stage,
                    centers,
                    max_iter=self.max_iter,
                    tol=tol,
                    inertia_tol=stage_inertia_tol(size),
                    relaxation=self.relaxation,
                )
            self._log("stage on %d rows: %d iterations, %.2f s", size, n_iter, t0)
        return _FitResult(centers, assignment.labels, assignment.inertia, n_iter, converged)

    def _fit_sklearn(self, X: np.ndarray, n_clusters: int, init, rng) -> _FitResult:
        from sklearn.cluster import KMeans as SkKMeans
        from sklearn.cluster import MiniBatchKMeans as SkMiniBatchKMeans

        init_arg = init if init is not None else self.init
        n_init = self._n_init() if self.n_init != "auto" else "auto"
        seed = rng.randint(np.iinfo(np.int32).max)
        if self.algorithm == "minibatch":
            model = SkMiniBatchKMeans(
                n_clusters, init=init_arg, n_init=n_init, max_iter=self.max_iter, tol=self.tol,
                random_state=seed,
            )  # fmt: skip
        else:
            model = SkKMeans(
                n_clusters, init=init_arg, n_init=n_init, max_iter=self.max_iter, tol=self.tol,
                random_state=seed,
            )  # fmt: skip
        model.fit(X)
        return _FitResult(
            model.cluster_centers_.astype(np.float32),
            model.labels_.astype(np.int64),
            float(model.inertia_),
            int(model.n_iter_),
            int(model.n_iter_) < self.max_iter,
        )

    def _fit_cuml(self, X: Any, n_clusters: int, init, rng) -> _FitResult:
        from cuml.cluster import KMeans as CuKMeans

        model = CuKMeans(
            n_clusters=n_clusters,
            init=init if init is not None else "scalable-k-means++",
            n_init=self._n_init(),
            max_iter=self.max_iter,
            tol=self.tol,
            random_state=int(rng.randint(np.iinfo(np.int32).max)),
            output_type="numpy",
        )
        model.fit(X)
        return _FitResult(
            np.asarray(model.cluster_centers_, dtype=np.float32),
            np.asarray(model.labels_, dtype=np.int64),
            float(model.inertia_),
            int(getattr(model, "n_iter_", self.max_iter)),
            True,
        )

    # -- choosing k -----------------------------------------------------------------------

    def _select_k(self, X: Any, rng) -> int:
        """Score every candidate k on a sample; store the curve in ``k_selection_``."""
        from sklearn.metrics import adjusted_rand_score, silhouette_score

        n_samples = X.shape[0]
        size = min(n_samples, self.k_sample_size)
        ks = check_k_range(self.k_range, size)
        rows = np.sort(rng.choice(n_samples, size=size, replace=False))
        data = make_feature_data(X, "torch" if self.backend_ == "torch" else "faiss")
        sample = data.get_subset(rows)
        tol = self.tol * mean_variance(sample)

        def fit_centers(points: np.ndarray, k: int, seed_rng, n_init: int) -> np.ndarray:
            points_data = HostData(points, kernel="faiss")
            best = None
            for _ in range(n_init):
                seeds, _ = kmeans_plusplus(points, k, random_state=seed_rng)
                centers, assignment, _, _ = lloyd(
                    points_data,
                    seeds,
                    max_iter=self.max_iter,
                    tol=tol,
                    inertia_tol=self.inertia_tol,
                    relaxation=self.relaxation,
                )
                if best is None or assignment.inertia < best[0]:
                    best = (assignment.inertia, centers)
            return best[1]

        sample_data = HostData(sample, kernel="faiss")
        scores = []
        for k in ks:
            if self.k_criterion == "silhouette":
                centers = fit_centers(sample, k, rng, self._n_init())
                labels = sample_data.assign(centers, accumulate=False).labels
                found = np.unique(labels).size > 1
                scores.append(float(silhouette_score(sample, labels)) if found else -1.0)
            else:
                # Fit on three random 80% subsets with different seeds, label the whole sample
                # with each, and score the mean pairwise agreement (ARI).
                labelings = []
                for _ in range(3):
                    subset = rng.choice(size, size=max(k, int(0.8 * size)), replace=False)
                    centers = fit_centers(sample[subset], k, rng, 1)
                    labelings.append(sample_data.assign(centers, accumulate=False).labels)
                pairs = [(0, 1), (0, 2), (1, 2)]
                scores.append(
                    float(
                        np.mean([adjusted_rand_score(labelings[a], labelings[b]) for a, b in pairs])
                    )
                )
        if self.k_criterion == "silhouette":
            self.k_selection_ = select_best(
                "silhouette", ks, scores, details={"sample_size": int(size)}
            )
        else:
            # A coarser grouping of well separated clusters is stable too (two blobs merged
            # the same way every time), so take the largest k that is about as stable as the
            # best: the finest structure the data supports.
            best = max(scores)
            chosen = max(k for k, score in zip(ks, scores, strict=True) if score >= best - 0.02)
            self.k_selection_ = KSelection(
                method="stability",
                ks=list(ks),
                scores=scores,
                chosen=chosen,
                details={"sample_size": int(size), "rule": "largest k with score >= best - 0.02"},
            )
        logger.debug(
            "KMeans: n_clusters='auto' chose k=%d by %s over k=%s",
            self.k_selection_.chosen,
            self.k_criterion,
            ks,
        )
        return self.k_selection_.chosen

    # -- using a fitted model -------------------------------------------------------------

    def _check_predict_input(self, X: Any) -> Any:
        check_is_fitted(self, "cluster_centers_")
        X = check_features(X, keep_on_device=True, chunk_rows=self.chunk_rows)
        check_n_features(X, self.n_features_in_, type(self).__name__)
        return X

    def _assign(self, X: Any) -> Assignment:
        backend = self.backend_ if self.backend_ in ("faiss", "torch") else "faiss"
        if is_gpu_array(X) and backend == "faiss" and self.device_ == "cpu":
            X = to_numpy(X)
        data = make_feature_data(X, backend, chunk_rows=self.chunk_rows)
        return data.assign(self.cluster_centers_, accumulate=False)

    def predict(self, X: Any) -> np.ndarray:
        """Index of the closest centre for each row of ``X``."""
        return self._assign(self._check_predict_input(X)).labels

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit and return ``labels_``."""
        return self.fit(X).labels_

    def transform(self, X: Any) -> np.ndarray:
        """Euclidean distances (n_samples, n_clusters) from each row to every centre."""
        X = to_numpy(self._check_predict_input(X))
        centers = self.cluster_centers_
        out = np.empty((X.shape[0], centers.shape[0]), dtype=np.float32)
        c_sq = np.einsum("ij,ij->i", centers, centers)
        for start in range(0, X.shape[0], self.chunk_rows):
            chunk = np.asarray(X[start : start + self.chunk_rows], dtype=np.float32)
            sq = np.einsum("ij,ij->i", chunk, chunk)[:, None] - 2 * chunk @ centers.T + c_sq
            out[start : start + chunk.shape[0]] = np.sqrt(np.maximum(sq, 0.0))
        return out

    def score(self, X: Any, y: Any = None) -> float:
        """Opposite of the inertia of ``X`` on the fitted centres (higher is better)."""
        return -self._assign(self._check_predict_input(X)).inertia

    def _log(self, message: str, *args: Any) -> None:
        if self.verbose:
            *head, started = args
            logger.debug("KMeans " + message, *head, time.perf_counter() - started)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
