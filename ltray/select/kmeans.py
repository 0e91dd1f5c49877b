"""Euclidean k-means for the selection steps of COLT (docs/math/colt.md §4 step 1) and MAK (docs/math/mak.md §4 step 2).

Both references call scikit-learn `KMeans(n_clusters, random_state=0)` from the era when `n_init` defaulted to 10;
ltray pins `n_init` explicitly and reports the backend so that it can be logged.
"""

from __future__ import annotations

import numpy as np
import sklearn
import torch
from sklearn.cluster import KMeans

from ltray.errors import ConfigError, DataError

_NORM_EPS = 1e-12


def as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A NumPy view (or CPU copy) of an array or tensor, without gradient."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def l2_normalise(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Row-wise x / max(‖x‖₂, 1e-12) in float32 (the semantics of `torch.nn.functional.normalize`)."""
    rows = as_numpy(x).astype(np.float32, copy=False)
    if rows.ndim != 2:
        raise DataError(f"expected a 2-d feature array, got shape {tuple(rows.shape)}")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, _NORM_EPS)


def backend_name(n_init: int = 10) -> str:
    """The k-means backend string logged with every selection."""
    return f"sklearn.cluster.KMeans {sklearn.__version__} (lloyd, n_init={n_init})"


def kmeans(
    x: np.ndarray | torch.Tensor, n_clusters: int, random_state: int = 0, n_init: int = 10
) -> tuple[np.ndarray, np.ndarray, str]:
    """Euclidean k-means of the rows of x.

    Returns (labels int64 [N], centres [n_clusters, d] in the dtype of x (float32 or float64), backend name).
    """
    data = as_numpy(x)
    if data.ndim != 2:
        raise DataError(f"k-means expects a 2-d feature array, got shape {tuple(data.shape)}")
    if data.dtype not in (np.float32, np.float64):
        data = data.astype(np.float32)
    if n_clusters < 1:
        raise ConfigError(f"the number of clusters must be >= 1, got {n_clusters}")
    if n_init < 1:
        raise ConfigError(f"k-means n_init must be >= 1, got {n_init}")
    if data.shape[0] < n_clusters:
        raise DataError(f"k-means with {n_clusters} clusters needs at least {n_clusters} rows, got {data.shape[0]}")
    model = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=random_state, algorithm="lloyd").fit(data)
    return model.labels_.astype(np.int64), model.cluster_centers_, backend_name(n_init)
