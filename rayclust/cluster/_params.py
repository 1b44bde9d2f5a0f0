"""Estimator parameters: declared once as fields, checked by declarative rules in ``fit``.

scikit-learn asks that ``__init__`` only store the parameters and that ``fit`` validate them.
:func:`estimator_parameters` writes that ``__init__`` from annotated fields, and
:func:`check_params` checks them against a table of rules, so every estimator (here and in
``rayclust.ensemble``) says the same thing the same way::

    _PARAMETER_RULES = {"max_iter": Int(1), "tol": Real(0), "n_init": ("auto", Int(1))}
    check_params(self, _PARAMETER_RULES)  # n_init=0 -> "n_init=0 should be 'auto' or an int >= 1"
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


def estimator_parameters(cls: type) -> type:
    """Class decorator for estimators whose parameters are declared as annotated fields.

    It writes the ``__init__`` that scikit-learn asks for (store every parameter under its own
    name, nothing else), so a parameter is declared once, with its type and default, instead of
    twice (in the signature and in an assignment). ``BaseEstimator``'s ``repr`` and identity
    equality are kept (``eq=False, repr=False``); put ``_: KW_ONLY`` after the positional ones.
    """
    return dataclass(eq=False, repr=False)(cls)


@dataclass(frozen=True)
class Interval:
    """Ints or real numbers (never bools) in ``[low, high)``; either bound may be open."""

    kind: type  # int or float
    low: float | None = None
    high: float | None = None

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, _NUMBER_TYPES[self.kind]):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value < self.high)

    def describe(self) -> str:
        noun = "an int" if self.kind is int else "a number"
        if self.high is not None:
            return f"{noun} in [{self.low}, {self.high})"
        return noun if self.low is None else f"{noun} >= {self.low}"


_NUMBER_TYPES = {int: (int, np.integer), float: (int, float, np.integer, np.floating)}


def Int(low: int | None = None) -> Interval:  # noqa: N802 - reads as a type in rule tables
    return Interval(int, low)


def Real(low: float | None = None, high: float | None = None) -> Interval:  # noqa: N802
    return Interval(float, low, high)


@dataclass(frozen=True)
class OneOf:
    """One of a few names."""

    names: tuple[str, ...]

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.names

    def describe(self) -> str:
        return f"one of {', '.join(self.names)}"


@dataclass(frozen=True)
class CheckedInFit:
    """Any value that is not a string: ``fit`` checks it against the data (an ``n_clusters``
    against n_samples, an ``init`` array against its shape). The rule only refuses strings that
    no other alternative names, and the message calls the value ``description``."""

    description: str

    def accepts(self, value: Any) -> bool:
        return not isinstance(value, str)

    def describe(self) -> str:
        return self.description


Alternative = Interval | OneOf | CheckedInFit | str | None
Rule = Alternative | tuple[Alternative, ...]


def _accepts(alternative: Alternative, value: Any) -> bool:
    if alternative is None:
        return value is None
    if isinstance(alternative, str):
        return isinstance(value, str) and value == alternative
    return alternative.accepts(value)


def _describe(alternative: Alternative) -> str:
    if alternative is None or isinstance(alternative, str):
        return repr(alternative)
    return alternative.describe()


def check_params(estimator: Any, rules: Mapping[str, Rule]) -> None:
    """Check the estimator's parameters against ``rules`` (name -> allowed alternatives).

    ``{"max_iter": Int(1), "n_init": ("auto", Int(1)), "sample_size": (Int(1), None)}``
    refuses ``n_init=0`` with ``ValueError("n_init=0 should be 'auto' or an int >= 1")``.
    """
    for name, rule in rules.items():
        alternatives = rule if isinstance(rule, tuple) else (rule,)
        value = getattr(estimator, name)
        if not any(_accepts(alternative, value) for alternative in alternatives):
            allowed = " or ".join(_describe(alternative) for alternative in alternatives)
            raise ValueError(f"{name}={value!r} should be {allowed}")
