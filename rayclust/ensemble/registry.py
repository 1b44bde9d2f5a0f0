"""Consensus methods by name, like timm's ``create_model`` / ``list_models``."""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any

from sklearn.base import BaseEstimator

from .bipartite import BipartiteConsensus
from .coassociation import CoAssociationConsensus

_CONSENSUS: dict[str, type[BaseEstimator]] = {
    "bipartite": BipartiteConsensus,
    "coassociation": CoAssociationConsensus,
}


def register_consensus(name: str, cls: type[BaseEstimator]) -> type[BaseEstimator]:
    """Add a consensus method (an estimator whose ``fit(partitions, weights=...)`` sets
    ``labels_``) under ``name``; a taken name is refused."""
    if name in _CONSENSUS and _CONSENSUS[name] is not cls:
        raise ValueError(f"consensus name {name!r} is taken by {_CONSENSUS[name].__name__}")
    _CONSENSUS[name] = cls
    return cls


def list_consensus(pattern: str = "*") -> list[str]:
    """Sorted names of the registered consensus methods matching a shell-style pattern."""
    return sorted(name for name in _CONSENSUS if fnmatch.fnmatchcase(name, pattern))


def create_consensus(name: str, **kwargs: Any) -> BaseEstimator:
    """A new consensus estimator, e.g. ``create_consensus("bipartite", n_clusters=10)``."""
    try:
        cls = _CONSENSUS[name]
    except KeyError:
        known = list_consensus()
        close = difflib.get_close_matches(str(name), known, n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown consensus method {name!r}{hint} (known: {', '.join(known)})"
        ) from None
    return cls(**kwargs)
