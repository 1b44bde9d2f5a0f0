"""Input checks shared by every clustering estimator.

One function, :func:`check_features`, turns whatever the caller passed (numpy, a memory-mapped
file, a torch tensor, a CuPy array, a list of lists) into a 2-D float32 array, and refuses input
that would silently give wrong clusters: NaN or inf rows (reported with their count), rows so
large that squared distances overflow float32 (:data:`MAX_ROW_NORM`), empty or wrongly shaped
arrays, fewer samples than clusters. GPU arrays stay on their device when the
caller asks for it, so a GPU backend never pays a host round trip.

Large memory-mapped arrays are checked chunk by chunk and returned without a copy when they
already are C-ordered float32, so a 10M-row feature file never has to fit in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning

# Rows per chunk when scanning big arrays: 64k rows x 128 float32 is 32 MB.
DEFAULT_CHUNK_ROWS = 65_536

# Largest L2 norm of a row that every backend can cluster. All of them (FAISS, numpy BLAS,
# torch, cuML) compute squared distances in float32 as ||x||^2 + ||c||^2 - 2 x.c, and a
# centroid is a mean of rows, so every term stays below (2 * max norm)^2. With norms up to
# 2^62 that is 2^126, under float32's largest value (~2^128). Above it distances turn into
# inf / NaN: FAISS then returns label -1, and a -1 label once indexed past the end of the
# per-cluster sums and corrupted the process's memory (the next fit aborted). Such features
# never come out of a working network: they are damage or a unit error, so they are refused
# with a message rather than silently rescaled.
MAX_ROW_NORM = float(2.0**62)  # ~4.6e18


class UnusableFeaturesError(ValueError):
    """Features no backend can cluster as they are: NaN / inf rows, or rows so large that
    squared distances overflow float32; the message counts them and names the first."""


class FewDistinctPointsWarning(ConvergenceWarning):
    """Fewer distinct points (or non-empty clusters) than requested clusters."""


def array_kind(X: Any) -> str:
    """'torch', 'cupy' or 'numpy' (anything else numpy can read counts as numpy)."""
    module = type(X).__module__.split(".")[0]
    if module == "torch":
        return "torch"
    if module == "cupy":
        return "cupy"
    return "numpy"


def is_gpu_array(X: Any) -> bool:
    """True for CuPy arrays and CUDA torch tensors."""
    kind = array_kind(X)
    if kind == "cupy":
        return True
    if kind == "torch":
        return X.device.type == "cuda"
    return False


def to_numpy(X: Any) -> np.ndarray:
    """Host copy of a torch/CuPy array; numpy input (memmaps included) is returned as is."""
    kind = array_kind(X)
    if kind == "torch":
        return X.detach().cpu().numpy()
    if kind == "cupy":
        return X.get()
    return X


def check_n_clusters(n_clusters: int, n_samples: int) -> int:
    """Validate a requested number of clusters against the number of samples."""
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int | np.integer):
        raise TypeError(
            f"n_clusters={n_clusters!r} should be an int (or 'auto' where supported), "
            f"got {type(n_clusters).__name__}"
        )
    if n_clusters < 1:
        raise ValueError(f"n_clusters={n_clusters} should be >= 1")
    if n_samples < n_clusters:
        raise ValueError(f"n_samples={n_samples} should be >= n_clusters={n_clusters}")
    return int(n_clusters)


def check_k_range(k_range: Sequence[int] | None, n_samples: int, *, max_k: int = 20) -> list[int]:
    """Candidate numbers of clusters for automatic k selection.

    ``None`` gives 2..min(max_k, n_samples - 1). Every k must satisfy 2 <= k <= n_samples - 1,
    the range on which silhouette and eigengap scores are defined.
    """
    if n_samples < 3:
        raise ValueError(
            f"n_samples={n_samples} should be >= 3 to choose the number of clusters "
            "automatically (k from 2 to n_samples - 1)"
        )
    if k_range is None:
        return list(range(2, min(max_k, n_samples - 1) + 1))
    ks = sorted({int(k) for k in k_range})
    if not ks:
        raise ValueError("k_range is empty; give at least one candidate number of clusters")
    if ks[0] < 2:
        raise ValueError(f"k_range contains k={ks[0]}; every candidate should be >= 2")
    if ks[-1] > n_samples - 1:
        raise ValueError(
            f"k_range contains k={ks[-1]}; every candidate should be <= n_samples - 1 = "
            f"{n_samples - 1}"
        )
    return ks


def check_n_features(X: Any, n_features_in: int, estimator_name: str) -> None:
    """Predict-time check that X has as many columns as the data the estimator was fitted on."""
    n_features = X.shape[1]
    if n_features != n_features_in:
        raise ValueError(
            f"X has {n_features} features, but {estimator_name} is expecting "
            f"{n_features_in} features as input."
        )


def iter_row_chunks(
    X: Any, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start_row, float32 chunk)``; reads a memmap piece by piece."""
    for start in range(0, X.shape[0], chunk_rows):
        chunk = np.asarray(X[start : start + chunk_rows])
        yield start, np.ascontiguousarray(chunk, dtype=np.float32)


def count_non_finite_rows(X: Any, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> tuple[int, int]:
    """(number of rows holding NaN or inf, index of the first such row or -1)."""
    kind = array_kind(X)
    if kind == "torch":
        import torch

        bad = ~torch.isfinite(X).all(dim=1)
        n_bad = int(bad.sum())
        return n_bad, int(torch.nonzero(bad)[0, 0]) if n_bad else -1
    if kind == "cupy":
        import cupy

        bad = ~cupy.isfinite(X).all(axis=1)
        n_bad = int(bad.sum())
        return n_bad, int(cupy.flatnonzero(bad)[0]) if n_bad else -1
    n_bad, first = 0, -1
    for start in range(0, X.shape[0], chunk_rows):
        chunk = X[start : start + chunk_rows]
        # A sum is NaN iff some term is NaN or inf; it is cheap and needs no n x d mask.
        row_sums = np.add.reduce(chunk, axis=1, dtype=np.float64)
        suspects = np.flatnonzero(~np.isfinite(row_sums))
        if suspects.size:
            bad_rows = suspects[~np.isfinite(chunk[suspects]).all(axis=1)]
            if bad_rows.size and first < 0:
                first = start + int(bad_rows[0])
            n_bad += int(bad_rows.size)
    return n_bad, first


def find_oversized_rows(
    X: Any, limit: float = MAX_ROW_NORM, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> tuple[int, int, float]:
    """(number of rows whose L2 norm exceeds ``limit``, first such row or -1, its norm).

    Host arrays are read chunk by chunk; a chunk whose largest absolute value cannot reach
    ``limit`` (max |x| * sqrt(d) <= limit) is passed after one min/max pass, so the exact
    float64 norms are only computed where a value is large.
    """
    kind = array_kind(X)
    if kind in ("torch", "cupy"):
        if kind == "torch":
            import torch

            norms = torch.linalg.vector_norm(X.double(), dim=1)
            big = torch.nonzero(norms > limit).flatten()
            first = int(big[0]) if big.numel() else -1
        else:
            import cupy

            norms = cupy.linalg.norm(X.astype(cupy.float64), axis=1)
            big = cupy.flatnonzero(norms > limit)
            first = int(big[0]) if big.size else -1
        return int(big.shape[0]), first, float(norms[first]) if first >= 0 else 0.0
    n_big, first, first_norm = 0, -1, 0.0
    sqrt_d = float(np.sqrt(max(X.shape[1], 1)))
    for start in range(0, X.shape[0], chunk_rows):
        chunk = X[start : start + chunk_rows]
        if chunk.size == 0:
            continue
        largest = max(abs(float(chunk.max())), abs(float(chunk.min())))
        if largest * sqrt_d <= limit:
            continue
        norms = np.linalg.norm(np.asarray(chunk, dtype=np.float64), axis=1)
        big = np.flatnonzero(norms > limit)
        if big.size and first < 0:
            first, first_norm = start + int(big[0]), float(norms[big[0]])
        n_big += int(big.size)
    return n_big, first, first_norm


def _shape_error(shape: tuple[int, ...]) -> ValueError:
    if len(shape) == 1:
        hint = (
            "; Reshape your data with X.reshape(-1, 1) if it holds one feature or "
            "X.reshape(1, -1) if it holds one sample"
        )
    else:
        hint = "; flatten each sample into one row first"
    return ValueError(
        f"Expected a 2-D array of features (n_samples, n_features), got a {len(shape)}-D array "
        f"of shape {shape}{hint}"
    )


def _as_float32_host(X: Any) -> np.ndarray:
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(
            "sparse input is not supported by rayclust clustering; pass a dense array "
            "(X.toarray()) of features"
        )
    if isinstance(X, np.ndarray):
        array = X
    else:
        # Lists, pandas frames, anything with __array__.
        array = np.asarray(X)
        if array.dtype == object:
            array = np.asarray(X, dtype=np.float64)
    if np.iscomplexobj(array):
        raise ValueError("Complex data not supported; pass real-valued features")
    if array.dtype.kind not in "biuf":
        # Object arrays of numbers are fine; anything else raises TypeError/ValueError here.
        array = array.astype(np.float64)
    if array.ndim != 2:
        raise _shape_error(array.shape)
    if array.dtype == np.float32 and array.flags.c_contiguous:
        return array  # memmaps stay memmaps: no copy of a file that may not fit in memory
    if array.dtype == np.float64:
        with np.errstate(over="ignore"):
            # Values beyond float32's range become inf and are then reported, never hidden.
            return np.ascontiguousarray(array, dtype=np.float32)
    return np.ascontiguousarray(array, dtype=np.float32)


def _as_float32_device(X: Any) -> Any:
    kind = array_kind(X)
    if kind == "torch":
        import torch

        if X.is_complex():
            raise ValueError("Complex data not supported; pass real-valued features")
        if X.ndim != 2:
            raise _shape_error(tuple(X.shape))
        return X.detach().to(torch.float32).contiguous()
    import cupy

    if cupy.iscomplexobj(X):
        raise ValueError("Complex data not supported; pass real-valued features")
    if X.ndim != 2:
        raise _shape_error(tuple(X.shape))
    return cupy.ascontiguousarray(X, dtype=cupy.float32)


def check_features(
    X: Any,
    *,
    min_samples: int = 1,
    n_clusters: int | None = None,
    keep_on_device: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Any:
    """Validate features and return them as a C-ordered 2-D float32 array.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        numpy array, ``np.memmap``, torch tensor, CuPy array or nested lists.
    min_samples : int
        Fewest rows the caller can work with (e.g. ``n_neighbors + 1`` for a kNN graph).
    n_clusters : int, optional
        When given, checked to be >= 1 and <= n_samples.
    keep_on_device : bool
        Return CUDA torch tensors and CuPy arrays as they are (float32, on their GPU) instead
        of copying them to the host. CPU torch tensors always become numpy arrays.
    chunk_rows : int
        Rows per chunk when scanning for non-finite values.

    Returns
    -------
    A float32 numpy array (a float32 C-ordered memmap is returned without a copy) or, with
    ``keep_on_device``, the GPU array.

    Raises
    ------
    ValueError
        Not 2-D, empty, no features, complex, NaN/inf rows (with their count), rows whose
        L2 norm exceeds :data:`MAX_ROW_NORM` (with their count), or fewer
        samples than ``min_samples`` / ``n_clusters``.
    TypeError
        Sparse input, or values that are not numbers.
    """
    if keep_on_device and is_gpu_array(X):
        features = _as_float32_device(X)
    else:
        features = _as_float32_host(to_numpy(X))

    n_samples, n_features = features.shape
    if n_samples == 0:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={tuple(features.shape)}) while a minimum of "
            f"{max(min_samples, 1)} is required: the input is empty"
        )
    if n_features == 0:
        raise ValueError(
            f"Found array with 0 feature(s) (shape={tuple(features.shape)}) while a minimum of "
            "1 is required."
        )
    if n_samples < min_samples:
        raise ValueError(f"n_samples={n_samples} should be >= {min_samples}")
    if n_clusters is not None:
        check_n_clusters(n_clusters, n_samples)

    n_bad, first_bad = count_non_finite_rows(features, chunk_rows)
    if n_bad:
        raise UnusableFeaturesError(
            f"Input contains NaN or inf in {n_bad} of {n_samples} rows (first at row "
            f"{first_bad}); drop or impute those rows before clustering (float64 values beyond "
            "float32's range, |x| > 3.4e38, count as inf)"
        )
    n_big, first_big, norm = find_oversized_rows(features, chunk_rows=chunk_rows)
    if n_big:
        raise UnusableFeaturesError(
            f"Input has {n_big} of {n_samples} rows too large to cluster (first at row "
            f"{first_big}: L2 norm {norm:.3g} > {MAX_ROW_NORM:.3g}): their squared distances "
            "overflow float32; scale the features down (e.g. L2-normalise them) or drop "
            "those rows"
        )
    return features
