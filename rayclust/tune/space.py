"""Search spaces written in YAML, checked against the stage's config, turned into Tune domains.

One entry per dotted config key; the value names a distribution and its arguments::

    clustering.n_clusters: {randint: [3, 8]}            # integers 3..8, both included
    clustering.algorithm:  {choice: [kmeans, spectral]}  # sampled; any registered algorithm
    clustering.pca_dim:    {grid: [16, 32, null]}        # every value, crossed with the rest
    episodic.alpha:        {uniform: [0.0, 1.0]}
    optim.lr:              {loguniform: [1.0e-5, 1.0e-3]}

Keys are checked against the stage's config dataclass at load (a typo fails naming the key
and its closest match), and so is every value a trial can draw: each grid / choice value
and both bounds of a range are put into a full config, so ``episodic.alpha: {uniform:
[0, 2]}`` fails before any trial starts, with the config's own message.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from dataclasses import dataclass
from typing import Any

from rayclust.config import ConfigError, config_from_dict, deep_merge, nest_dotted

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
DISCRETE_KINDS = ("grid", "choice")


@dataclass(frozen=True)
class Dimension:
    """One searched key: its distribution and arguments, as written."""

    key: str  # dotted config key, e.g. "clustering.n_clusters"
    kind: str  # one of KINDS
    args: tuple[Any, ...]  # values (grid, choice) or (low, high)

    @property
    def discrete(self) -> bool:
        return self.kind in DISCRETE_KINDS

    def probe_values(self) -> list[Any]:
        """Values that bound what a trial can draw (every value of a discrete dimension)."""
        return list(self.args)

    def to_tune(self):
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.args))
        if self.kind == "choice":
            return tune.choice(list(self.args))
        low, high = self.args
        if self.kind == "uniform":
            return tune.uniform(low, high)
        if self.kind == "loguniform":
            return tune.loguniform(low, high)
        return tune.randint(low, high + 1)  # Tune's upper bound is exclusive; ours is not


def schema_for(stage: str) -> type:
    """The config dataclass a stage's trials run with."""
    if stage == "cluster":
        from rayclust.config import RunConfig

        return RunConfig
    if stage == "train":
        from rayclust.train.config import TrainConfig

        return TrainConfig
    if stage == "deep":
        from rayclust.deep.config import DeepConfig

        return DeepConfig
    raise ConfigError(f"stage={stage!r} is not one of 'cluster', 'train', 'deep'")


def _field_hint(schema: type, key: str) -> Any:
    """The type of ``key`` in ``schema``; raises naming the key when it is not a leaf field."""
    node: Any = schema
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(node):
            raise ConfigError(
                f"search key {key!r}: {'.'.join(parts[:depth])} is a value, not a section"
            )
        hints = typing.get_type_hints(node)
        if part not in {f.name for f in dataclasses.fields(node)}:
            # config_from_dict words the error (closest match) the way a YAML typo gets it.
            config_from_dict(schema, nest_dotted({key: None}))
        node = hints[part]
    if dataclasses.is_dataclass(node):
        raise ConfigError(
            f"search key {key!r} is a whole section; search one of its keys, "
            f"e.g. {key}.{dataclasses.fields(node)[0].name}"
        )
    return node


def _is_list_field(hint: Any) -> bool:
    return typing.get_origin(hint) is list


def _parse_dimension(key: str, spec: Any) -> Dimension:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"search.{key} should be one mapping like {{choice: [a, b]}} or "
            f"{{uniform: [0, 1]}}, got {spec!r}"
        )
    ((kind, args),) = spec.items()
    if kind not in KINDS:
        raise ConfigError(f"search.{key}: {kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"search.{key}.{kind} should be a non-empty list, got {args!r}")
    if kind in DISCRETE_KINDS:
        return Dimension(key, kind, tuple(args))
    if len(args) != 2:
        raise ConfigError(f"search.{key}.{kind} should be [low, high], got {args!r}")
    low, high = args
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in args)
    if kind == "randint" and not all(isinstance(v, int) and not isinstance(v, bool) for v in args):
        raise ConfigError(f"search.{key}.randint bounds should be integers, got {args!r}")
    if not numeric:
        raise ConfigError(f"search.{key}.{kind} bounds should be numbers, got {args!r}")
    if low > high or (kind != "randint" and low == high):
        raise ConfigError(f"search.{key}.{kind}: low={low} should be < high={high}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"search.{key}.loguniform: low={low} should be > 0")
    return Dimension(key, kind, (low, high))


class SearchSpace:
    """Parsed, validated search space of one sweep over one stage's config."""

    def __init__(self, dimensions: list[Dimension], schema: type, base: dict[str, Any]):
        self.dimensions = dimensions
        self.schema = schema
        self.base = base
        self._list_keys = {
            d.key for d in dimensions if _is_list_field(_field_hint(schema, d.key))
        }

    @classmethod
    def from_yaml(cls, search: dict[str, Any], schema: type, base: dict[str, Any]) -> SearchSpace:
        """Parse ``search`` and check every key and bound against ``schema`` over ``base``."""
        if not isinstance(search, dict) or not search:
            raise ConfigError("search should map dotted config keys to distributions")
        dimensions = []
        for key, spec in search.items():
            _field_hint(schema, key)
            dimensions.append(_parse_dimension(key, spec))
        space = cls(dimensions, schema, base)
        for dim in dimensions:
            for value in dim.probe_values():
                try:
                    space.trial_config({dim.key: value})
                except ConfigError as exc:
                    raise ConfigError(f"search.{dim.key} value {value!r}: {exc}") from None
        return space

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    def dimension(self, key: str) -> Dimension:
        return next(d for d in self.dimensions if d.key == key)

    def param_space(self) -> dict[str, Any]:
        """Tune's ``param_space``: flat dotted keys -> Tune domains."""
        return {d.key: d.to_tune() for d in self.dimensions}

    def normalise(self, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's drawn values as the config takes them (a single view name -> [name])."""
        out = {}
        for key, value in params.items():
            if key in self._list_keys and not isinstance(value, list):
                value = [value]
            out[key] = value
        return out

    def trial_dict(self, params: dict[str, Any]) -> dict[str, Any]:
        """The base config (as a dict) with a trial's values put in."""
        values = nest_dotted(self.normalise(params))
        selects = "select" in (self.base.get("clustering") or {})
        if selects and "clustering.algorithm" in params and "clustering.select" not in params:
            # A searched algorithm is the trial's algorithm, not one the label-free choice
            # (clustering.select, rayclust/selection.py) may replace: as `--algorithm` does.
            values = deep_merge(values, {"clustering": {"select": "off"}})
        return deep_merge(self.base, values)

    def trial_config(self, params: dict[str, Any]) -> Any:
        """The validated config a trial with ``params`` runs (raises ConfigError naming keys)."""
        return config_from_dict(self.schema, self.trial_dict(params))

    def discrete_product(self, prefixes: tuple[str, ...]) -> list[dict[str, Any]]:
        """Every combination of the searched keys under ``prefixes`` ({} when none is searched).

        Used to prepare what trials share (features) before they start; such keys must be
        discrete so the set is finite.
        """
        dims = [d for d in self.dimensions if d.key.startswith(prefixes) or d.key in prefixes]
        for dim in dims:
            if not dim.discrete:
                raise ConfigError(
                    f"search.{dim.key} is {dim.kind}; keys that change the features trials "
                    "share must be choice or grid, so every value's features are extracted "
                    "once before the trials start"
                )
        combos = itertools.product(*(d.args for d in dims))
        return [dict(zip([d.key for d in dims], combo, strict=True)) for combo in combos]

    def check_search_alg(self, search_alg: str) -> None:
        continuous = [d.key for d in self.dimensions if not d.discrete]
        if search_alg == "grid" and continuous:
            raise ConfigError(
                f"search_alg=grid needs grid or choice values; {', '.join(continuous)} "
                "draw from ranges (use search_alg=random or optuna)"
            )
        grids = [d.key for d in self.dimensions if d.kind == "grid"]
        if search_alg == "optuna" and grids:
            raise ConfigError(
                f"search_alg=optuna cannot take grid values ({', '.join(grids)}); "
                "write them as choice"
            )
