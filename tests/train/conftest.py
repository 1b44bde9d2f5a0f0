"""Fixtures for the training tests: the shipped sample split into class roles."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class SampleClasses:
    source: Path
    classes: list[str]  # every class folder, sorted

    @property
    def train(self) -> list[str]:
        return self.classes[:3]

    @property
    def val(self) -> list[str]:
        return self.classes[3:5]


@pytest.fixture(scope="session")
def sample_classes(sample_dir) -> SampleClasses:
    """The shipped sample's class folders: the first three train, the next two validate."""
    classes = sorted(p.name for p in sample_dir.iterdir() if p.is_dir())
    assert len(classes) >= 5, (
        f"the sample should have >= 5 class folders; {sample_dir} has {classes}"
    )
    return SampleClasses(sample_dir, classes)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The test models are tiny: a second thread only adds synchronisation, and on a busy
    shared machine waiting for it costs ten times the work (measured: 115 s vs 12 s).
    Module-wide, so module fixtures and tests compute with the same thread count (float
    sums are only bit-identical for the same split of the work)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
