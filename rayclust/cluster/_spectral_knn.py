"""The kNN-graph formulation of spectral clustering: graph, normalised Laplacian, eigensolvers.

A symmetric kNN connectivity graph (FAISS, exact for small n, approximate beyond), the
symmetric normalised affinity ``D^-1/2 W D^-1/2`` and its leading eigenvectors from a dense,
ARPACK, LOBPCG or algebraic-multigrid-preconditioned LOBPCG solver, per connected component.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.utils import check_random_state

from ._spectral_components import ComponentSpectrum, eigenvalues_per_component
from .neighbors import knn_edges

EIGEN_SOLVERS = ("auto", "dense", "arpack", "lobpcg", "amg")

# Components up to this size are solved with a dense eigendecomposition (exact, fast enough).
DENSE_MAX_NODES = 1500


def knn_affinity(
    X: np.ndarray,
    n_neighbors: int,
    *,
    knn_method: str = "auto",
    backend: str = "auto",
    random_state: int | None = None,
) -> sp.csr_matrix:
    """Symmetric kNN connectivity ``0.5 * (C + C^T)``, each point counted among its own
    ``n_neighbors`` (as scikit-learn's ``SpectralClustering(affinity="nearest_neighbors")``)."""
    n = X.shape[0]
    if n_neighbors > 1:
        rows, cols = knn_edges(
            X, n_neighbors - 1, method=knn_method, backend=backend, random_state=random_state
        )
    else:
        rows = cols = np.empty(0, dtype=np.int64)
    rows = np.concatenate([np.arange(n), rows])
    cols = np.concatenate([np.arange(n), cols])
    connectivity = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
    return ((connectivity + connectivity.T) * 0.5).tocsr()


def default_sparse_solver() -> str:
    return "amg" if importlib.util.find_spec("pyamg") is not None else "arpack"


def _amg_preconditioner(laplacian: sp.csr_matrix) -> Any:
    try:
        from pyamg import smoothed_aggregation_solver
    except ImportError as error:
        raise ImportError(
            "eigen_solver='amg' needs pyamg: pip install pyamg (or use 'lobpcg' / 'arpack')"
        ) from error
    # A tiny shift makes the singular Laplacian positive definite for the multigrid setup.
    shifted = (laplacian + 1e-5 * sp.eye(laplacian.shape[0], format="csr")).tocsr()
    return smoothed_aggregation_solver(shifted).aspreconditioner()


def smallest_laplacian_eigenpairs(
    affinity: sp.csr_matrix,
    n_eigenpairs: int,
    *,
    eigen_solver: str = "auto",
    random_state: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Smallest eigenvalues (ascending) and eigenvectors of ``I - D^-1/2 W D^-1/2``.

    ``affinity`` must be symmetric, connected and free of isolated nodes. The eigenvectors are
    those of the normalised affinity, as Ng, Jordan & Weiss embed points.
    """
    rng = check_random_state(random_state)
    n = affinity.shape[0]
    m = min(n_eigenpairs, n)
    degrees = np.asarray(affinity.sum(axis=1)).ravel()
    sqrt_degrees = np.sqrt(degrees)
    if m == 1:
        # The first eigenvector of a connected graph is known: D^1/2 1, eigenvalue 0.
        return np.zeros(1), (sqrt_degrees / np.linalg.norm(sqrt_degrees))[:, None]
    inv_sqrt = sp.diags(1.0 / sqrt_degrees)
    normalized = (inv_sqrt @ affinity @ inv_sqrt).tocsr()

    solver = eigen_solver
    if solver == "auto":
        solver = "dense" if n <= DENSE_MAX_NODES else default_sparse_solver()
    if solver != "dense" and m >= n // 5:
        solver = "dense"  # iterative solvers need many fewer eigenpairs than nodes

    if solver == "dense":
        values, vectors = np.linalg.eigh(normalized.toarray())
        values, vectors = values[::-1][:m], vectors[:, ::-1][:, :m]
    elif solver == "arpack":
        from scipy.sparse.linalg import eigsh

        start = rng.uniform(-1.0, 1.0, n)
        values, vectors = eigsh(normalized, k=m, which="LA", v0=start, tol=1e-6)
        order = np.argsort(values)[::-1]
        values, vectors = values[order], vectors[:, order]
    elif solver in ("lobpcg", "amg"):
        from scipy.sparse.linalg import lobpcg

        laplacian = (sp.eye(n, format="csr") - normalized).tocsr()
        start = rng.standard_normal((n, m))
        start[:, 0] = sqrt_degrees  # the known first eigenvector speeds convergence
        preconditioner = _amg_preconditioner(laplacian) if solver == "amg" else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # lobpcg's own tolerance chatter
            laplacian_values, vectors = lobpcg(
                laplacian, start, M=preconditioner, tol=1e-5, maxiter=500, largest=False
            )
        order = np.argsort(laplacian_values)
        values, vectors = 1.0 - laplacian_values[order], vectors[:, order]
    else:
        raise ValueError(f"eigen_solver={eigen_solver!r} should be one of {EIGEN_SOLVERS}")
    laplacian_values = np.clip(1.0 - values, 0.0, 2.0)
    return laplacian_values, vectors


def knn_spectra(
    affinity: sp.csr_matrix,
    component_of: np.ndarray,
    n_components: int,
    n_eigenvalues: int,
    eigen_solver: str,
    rng: np.random.RandomState,
) -> list[ComponentSpectrum]:
    per_component = eigenvalues_per_component(n_components, n_eigenvalues)
    order = np.argsort(component_of, kind="stable")
    bounds = np.searchsorted(component_of[order], np.arange(n_components + 1))
    # Permuted once so that every component is a contiguous diagonal block: slicing a block
    # then costs its own nonzeros, not the whole graph's.
    grouped = affinity[order][:, order].tocsr() if n_components > 1 else affinity
    spectra = []
    for c in range(n_components):
        rows = order[bounds[c] : bounds[c + 1]]
        block = grouped[bounds[c] : bounds[c + 1], bounds[c] : bounds[c + 1]]
        values, vectors = smallest_laplacian_eigenpairs(
            block, per_component, eigen_solver=eigen_solver, random_state=rng
        )
        spectra.append(ComponentSpectrum(rows, values, lambda m, vectors=vectors: vectors[:, :m]))
    return spectra
