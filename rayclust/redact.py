"""Credentials out of everything rayclust writes or logs: config.yaml, MLflow params and tags,
log lines and error messages.

Two kinds of secret are masked as ``***``, wherever they sit in a (nested) config:

- the value of a key that names a credential (``secret``, ``password``, ``token``,
  ``credential``, ``key`` in its name: ``aws_secret_access_key``, ``client_kwargs.token``),
  at any depth; gcsfs's token modes (``anon``, ``google_default``, ``cloud``) are not secrets
  and stay;
- the password of a URL (``http://user:pw@host`` -> ``http://user:***@host``) and the value
  of a credential-named query parameter (``?token=...``), in any string, including the middle
  of an error message.

``redact`` returns a copy and never changes its argument; the config a run uses keeps its
real values, only what is written or logged is masked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
SECRET_KEY_WORDS = ("secret", "password", "passwd", "token", "credential", "key", "auth")
PUBLIC_TOKEN_VALUES = ("anon", "google_default", "cloud")  # gcsfs token modes

# scheme://user:password@  (password: anything up to the @ that ends the userinfo)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:'\"]*):(?P<pw>[^\s/@'\"]+)@")
_SECRET_QUERY = re.compile(
    r"(?P<head>[?&;](?P<name>[A-Za-z0-9_.\-]*(?:"
    + "|".join(SECRET_KEY_WORDS)
    + r")[A-Za-z0-9_.\-]*)=)(?P<value>[^&;\s'\"#]+)",
    re.IGNORECASE,
)


def is_secret_key(name: Any) -> bool:
    """Whether a mapping key names a credential (case-insensitive word match)."""
    lowered = str(name).lower()
    return any(word in lowered for word in SECRET_KEY_WORDS)


def redact_text(text: str) -> str:
    """``text`` with URL passwords and credential query values masked."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m.group('head')}{MASK}", text)


def strip_userinfo(uri: str) -> str:
    """A URI without its ``user:password@`` part (MLflow reads the credentials of a server
    from ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` instead)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s]*@", r"\1", uri)


def redact(value: Any) -> Any:
    """A copy of ``value`` (mappings, lists, tuples, strings, nested) with secrets masked."""
    if isinstance(value, Mapping):
        return {key: _redact_item(key, item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(item) for item in value)
    if isinstance(value, str):
        return redact_text(value)
    return value


def _redact_item(key: Any, item: Any) -> Any:
    if not is_secret_key(key) or item is None or isinstance(item, bool):
        return redact(item)
    if isinstance(item, str) and item in PUBLIC_TOKEN_VALUES:
        return item
    return _mask_all(item)  # a section named like a credential: every value in it


def _mask_all(item: Any) -> Any:
    if isinstance(item, Mapping):
        return {key: _mask_all(inner) for key, inner in item.items()}
    if isinstance(item, list | tuple):
        return type(item)(_mask_all(inner) for inner in item)
    return item if item is None or isinstance(item, bool) else MASK


def secret_paths(value: Any, prefix: str = "") -> list[str]:
    """Dotted keys of credential-named entries holding a value (for refusing them at load)."""
    found: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if is_secret_key(key) and _mask_all(item) != item:
                if not (isinstance(item, str) and item in PUBLIC_TOKEN_VALUES):
                    found.append(path)
                    continue
            if isinstance(item, Mapping | list | tuple):
                found += secret_paths(item, path)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found += secret_paths(item, f"{prefix}[{index}]")
    return found
