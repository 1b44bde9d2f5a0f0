"""Bipartite-graph consensus (HBGF, Fern & Brodley 2004): linear in the number of samples.

Samples and the clusters of every partition are the two sides of a graph; sample i is joined
to cluster c of partition p, with weight w_p, when p puts i in c. No n x n matrix is formed:
the graph is the sparse n x C incidence matrix A (C = clusters over all partitions, small).
It is partitioned spectrally, as in Dhillon's bipartite spectral co-clustering:

1. normalise ``B = D_s^-1/2 A D_c^-1/2`` (D_s, D_c: sample and cluster degrees);
2. take B's top ``n_clusters`` right singular vectors from the C x C matrix ``B^T B``
   (an exact dense eigendecomposition, cheap because C is small);
3. embed the samples as ``B V`` (the left singular vectors scaled by their singular values,
   which keeps directions of ~0 singular value at ~0 instead of dividing by them), normalise
   the rows and run K-means on them.

Samples with the same label in every partition have the same embedding, so K-means runs on
the distinct label patterns weighted by their counts: the same objective, fewer rows.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.linalg import eigh
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from rayclust.cluster import Int, check_params, estimator_parameters

from ._partitions import check_n_clusters, check_partitions, check_weights, covered_samples


def bipartite_incidence(labels: np.ndarray, weights: np.ndarray) -> sp.csr_matrix:
    """Weighted sample x cluster incidence (CSR, float64) of checked partitions.

    ``labels`` is ``check_partitions`` output; column ``offset_p + c`` is cluster c of
    partition p. Missing labels and zero-weight partitions add no edge.
    """
    n_partitions, n_samples = labels.shape
    n_per_partition = labels.max(axis=1) + 1
    offsets = np.concatenate([[0], np.cumsum(n_per_partition)])
    row_parts, col_parts, data_parts = [], [], []
    for index in range(n_partitions):
        if weights[index] == 0:
            continue
        present = np.flatnonzero(labels[index] >= 0)
        row_parts.append(present)
        col_parts.append(labels[index, present] + offsets[index])
        data_parts.append(np.full(present.size, weights[index]))
    rows = np.concatenate(row_parts)
    cols = np.concatenate(col_parts)
    data = np.concatenate(data_parts)
    shape = (n_samples, int(offsets[-1]))
    return sp.csr_matrix((data, (rows, cols)), shape=shape)


def _spectral_embedding(
    incidence: sp.csr_matrix, n_components: int, row_counts: np.ndarray
) -> np.ndarray:
    """Row-normalised spectral embedding of the rows of ``incidence``.

    Row r stands for ``row_counts[r]`` identical samples; degrees and ``B^T B`` count each of
    them, so every row gets exactly the embedding it would have in the full graph.
    """
    sample_degree = np.asarray(incidence.sum(axis=1)).ravel()
    cluster_degree = np.asarray(incidence.T @ row_counts).ravel()
    with np.errstate(divide="ignore"):
        sample_scale = np.where(sample_degree > 0, 1.0 / np.sqrt(sample_degree), 0.0)
        cluster_scale = np.where(cluster_degree > 0, 1.0 / np.sqrt(cluster_degree), 0.0)
    normalised = (sp.diags(sample_scale) @ incidence @ sp.diags(cluster_scale)).tocsr()
    gram = (normalised.T @ sp.diags(row_counts.astype(np.float64)) @ normalised).toarray()
    n_cols = gram.shape[0]
    n_components = min(n_components, n_cols)
    # Largest eigenpairs of B^T B = squared singular values and right singular vectors.
    _, vectors = eigh(gram, subset_by_index=(n_cols - n_components, n_cols - 1))
    # float32 product straight away: at n=1e6, k=100 a float64 result would add 800 MB.
    embedding = normalised.astype(np.float32) @ vectors.astype(np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", embedding, embedding))[:, None]
    np.divide(embedding, norms, out=embedding, where=norms > 0)
    return embedding


@estimator_parameters
class BipartiteConsensus(ClusterMixin, BaseEstimator):
    """Consensus by spectral partitioning of the sample-cluster bipartite graph (HBGF).

    Memory and time are linear in n_samples (1,000,000 samples x 10 partitions fit on a
    laptop); see ``benchmarks/consensus.py``.

    Parameters
    ----------
    n_clusters : number of consensus clusters.
    n_init : K-means restarts on the embedding (the best inertia wins).
    max_iter : K-means iteration cap.
    max_fit_samples : K-means fits its centroids on at most this many samples (drawn in
        proportion to the pattern counts), then assigns every sample to the nearest one;
        None fits on all. Centroids of a well-separated embedding need far fewer points
        than a million (FAISS uses 256 per centroid); this keeps K-means from dominating.
    random_state : seed of the sample and of the K-means initialisation.

    Attributes
    ----------
    labels_ : consensus label per sample, ``-1`` for samples no partition labels.
    n_partitions_ : number of partitions combined.
    n_patterns_ : distinct label patterns across partitions (rows K-means actually saw).
    """

    n_clusters: int = 8
    n_init: int = 3
    max_iter: int = 100
    max_fit_samples: int | None = 100_000
    random_state: int | None = 0

    def fit(self, partitions, y=None, weights=None) -> BipartiteConsensus:
        """Combine ``partitions`` (label arrays of equal length, -1 = missing); returns self."""
        check_params(
            self, {"n_init": Int(1), "max_iter": Int(1), "max_fit_samples": (Int(1), None)}
        )
        if self.max_fit_samples is not None and self.max_fit_samples < self.n_clusters:
            raise ValueError(
                f"max_fit_samples={self.max_fit_samples} should be >= "
                f"n_clusters={self.n_clusters} or None"
            )
        labels = check_partitions(partitions)
        weights = check_weights(weights, labels.shape[0])
        covered = covered_samples(labels, weights)
        check_n_clusters(self.n_clusters, int(covered.sum()))

        # One row per distinct pattern of labels; zero-weight partitions don't distinguish.
        used = labels[weights > 0][:, covered]
        patterns, pattern_of_sample, counts = np.unique(
            used.T, axis=0, return_inverse=True, return_counts=True
        )
        pattern_of_sample = pattern_of_sample.ravel()
        consensus = np.full(labels.shape[1], -1, dtype=np.int64)
        if patterns.shape[0] <= self.n_clusters:
            # Fewer distinct patterns than clusters: each pattern is its own cluster.
            consensus[covered] = pattern_of_sample
        else:
            incidence = bipartite_incidence(patterns.T, weights[weights > 0])
            embedding = _spectral_embedding(incidence, self.n_clusters, counts)
            kmeans = KMeans(
                n_clusters=self.n_clusters,
                n_init=self.n_init,
                max_iter=self.max_iter,
                random_state=self.random_state,
            )
            n_covered = int(counts.sum())
            # k-means++ seeding makes many small BLAS calls; with multi-threaded BLAS on a
            # busy machine their threads spin-wait (measured on 2 shared cores: 166 s
            # instead of 7 s). Lloyd's iterations parallelise with OpenMP regardless.
            with threadpool_limits(limits=1, user_api="blas"):
                if self.max_fit_samples is not None and n_covered > self.max_fit_samples:
                    rng = np.random.default_rng(self.random_state)
                    drawn = rng.choice(counts.size, size=self.max_fit_samples, p=counts / n_covered)
                    fit_rows, fit_counts = np.unique(drawn, return_counts=True)
                    kmeans.fit(embedding[fit_rows], sample_weight=fit_counts)
                    pattern_labels = kmeans.predict(embedding)
                else:
                    pattern_labels = kmeans.fit_predict(embedding, sample_weight=counts)
            consensus[covered] = pattern_labels[pattern_of_sample]
        self.labels_ = consensus
        self.n_partitions_ = labels.shape[0]
        self.n_patterns_ = int(patterns.shape[0])
        return self

    def fit_predict(self, partitions, y=None, weights=None) -> np.ndarray:
        return self.fit(partitions, weights=weights).labels_
