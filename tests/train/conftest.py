"""Fixtures for the training tests: the shipped sample split into class roles."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_DIR

TUXPAINT = Path("/work/data/tuxpaint")  # interim stand-in until data/sample is shipped


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
def sample_classes(tmp_path_factory) -> SampleClasses:
    source = SAMPLE_DIR
    if not source.is_dir():
        source = tmp_path_factory.mktemp("tux_sample")
        for name in ("animals", "food", "seasonal", "town", "vehicles"):
            folder = source / name
            folder.mkdir()
            for i, png in enumerate(sorted((TUXPAINT / name).rglob("*.png"))[:26]):
                (folder / f"{i:02d}.png").symlink_to(png)
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    assert len(classes) >= 5, f"the sample should have >= 5 class folders; {source} has {classes}"
    return SampleClasses(source, classes)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The test models are tiny: a second thread only adds synchronisation, and on a busy
    shared machine waiting for it costs ten times the work (measured: 115 s vs 12 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
