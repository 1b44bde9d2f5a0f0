"""Which rayclust made a run: its version and, from a git checkout, the commit.

Read by ``rayclust --version`` and put on every MLflow run as tags, so a score can be
traced back to the code that produced it. Light on purpose: ``rayclust --version`` must
not import torch or Ray.
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

from rayclust import __version__

PACKAGE_DIR = Path(__file__).resolve().parent


@cache
def git_commit() -> str | None:
    """The commit of the checkout rayclust runs from, with ``-dirty`` when files changed;
    None for an installed package (no git, or not inside a work tree)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.split()
        top, commit = Path(head[0]).resolve(), head[1]
        if not PACKAGE_DIR.is_relative_to(top):  # pragma: no cover - a nested install
            return None
        dirty = subprocess.run(
            ["git", "-C", str(top), "status", "--porcelain", "--untracked-files=no", "--",
             str(PACKAGE_DIR)],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
    return f"{commit}-dirty" if dirty else commit


def version_line() -> str:
    """``rayclust 0.1.0`` and, from a checkout, ``(git 84def92)``."""
    commit = git_commit()
    if not commit:
        return f"rayclust {__version__}"
    return f"rayclust {__version__} (git {commit[:7]}{commit[40:]})"


def provenance_tags() -> dict[str, str]:
    """MLflow tags naming the code: ``rayclust.version`` and, when known, ``rayclust.git_commit``
    (also under MLflow's own ``mlflow.source.git.commit``, which its UI shows)."""
    tags = {"rayclust.version": __version__}
    commit = git_commit()
    if commit:
        tags["rayclust.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
    return tags
