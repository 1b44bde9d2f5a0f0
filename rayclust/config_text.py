"""Config text: ``ConfigError``, YAML read without aliases, and dotted keys.

The part of configuration that knows no schema, so any module (the run record, the tuner, the
CLI) can use it without importing the stages' config classes. ``rayclust.config`` exports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and how to fix it."""


# --- dotted keys ----------------------------------------------------------------------------


def deep_merge(base: Mapping[str, Any], *updates: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``base`` with each update laid over it in turn, mappings merged key by key."""
    merged = dict(base)
    for update in updates:
        for key, value in update.items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
                merged[key] = deep_merge(merged[key], value)
            else:
                merged[key] = value
    return merged


def set_dotted(mapping: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """``set_dotted(d, "a.b.c", 1)`` sets ``d["a"]["b"]["c"] = 1``, making the sections on the
    way; returns ``d``."""
    parts = dotted.strip().split(".")
    node = mapping
    for depth, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {'.'.join(parts[: depth + 1])} is a value, not a section")
    node[parts[-1]] = value
    return mapping


_MISSING = object()


def get_dotted(source: Any, dotted: str, default: Any = _MISSING) -> Any:
    """The value at ``"a.b.c"`` in a nested mapping or config object (keys or attributes).

    A missing key returns ``default`` when given, else raises ``KeyError`` naming it.
    """
    node = source
    for part in dotted.split("."):
        if isinstance(node, Mapping):
            found = part in node
        else:  # a config object: its fields only (not its methods)
            found = dataclasses.is_dataclass(node) and part in {
                f.name for f in dataclasses.fields(node)
            }
        if not found:
            if default is not _MISSING:
                return default
            raise KeyError(f"{dotted}: no {part!r} there")
        node = node[part] if isinstance(node, Mapping) else getattr(node, part)
    return node


def nest_dotted(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "a.c": 2}`` -> ``{"a": {"b": 1, "c": 2}}``."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        set_dotted(nested, dotted, value)
    return nested


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["clustering.seeds=3", "views=[a,b]"]`` into a nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} should look like key.sub=value")
        dotted, raw = item.split("=", 1)
        try:
            value = load_yaml_text(raw, f"override {dotted}") if raw.strip() else None
        except ConfigError as exc:
            hint = "; quote it, e.g. key='text'" if "not valid YAML" in str(exc) else ""
            raise ConfigError(f"{exc}{hint}") from None
        set_dotted(nested, dotted, value)
    return nested


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (line, column)."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    text = str(problem) if problem else " ".join(str(exc).split())
    if mark is not None:
        text += f" at line {mark.line + 1}, column {mark.column + 1}"
    return text


# --- files ----------------------------------------------------------------------------------


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``): a few lines of nested aliases
    (a "billion laughs") expand to gigabytes when the config is written back or walked, and
    no rayclust config needs them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"YAML alias *{event.anchor} at line {event.start_mark.line + 1}: anchors and "
                "aliases are not accepted in rayclust configs; write the values out"
            )
        return super().compose_node(parent, index)


def load_yaml_text(text: str, where: str = "YAML") -> Any:
    """``yaml.safe_load`` without aliases; any YAML error is a one-line ``ConfigError``
    naming ``where`` (a file, an override)."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {yaml_problem(exc)}") from None


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The mapping a YAML file holds (an empty file is ``{}``); raises naming the file.

    Aliases are refused (see ``load_yaml_text``), as is anything but a mapping on top."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    loaded = load_yaml_text(path.read_text(), f"{what} {path}") or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} should hold a mapping at the top level")
    return loaded
