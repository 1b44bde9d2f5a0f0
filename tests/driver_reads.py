"""Counting the image bytes this process (a Ray driver) reads: files under a root opened
through ``open`` (builtins and io, which ``Path`` uses) and objects read through
``rayclust.remote.read_bytes``. Ray's workers are other processes: their reads are not
counted, which is the point."""

from __future__ import annotations

import builtins
import io
import os
from pathlib import Path

import pytest

from rayclust import remote


class DriverReads:
    """Files under ``root`` that this process opens, and their bytes (the file's size)."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = os.path.realpath(root)
        self.files: list[str] = []
        self.bytes = 0
        real_open, real_remote = builtins.open, remote.read_bytes

        def counting_open(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)):
                path = os.path.realpath(os.fspath(file))
                if path.startswith(self.root + os.sep) and os.path.isfile(path):
                    self.files.append(path)
                    self.bytes += os.path.getsize(path)
            return real_open(file, *args, **kwargs)

        def counting_remote(uri, *args, **kwargs):
            data = real_remote(uri, *args, **kwargs)
            self.files.append(uri)
            self.bytes += len(data)
            return data

        monkeypatch.setattr(builtins, "open", counting_open)
        monkeypatch.setattr(io, "open", counting_open)
        monkeypatch.setattr(remote, "read_bytes", counting_remote)
