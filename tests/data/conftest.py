"""Fixtures of the data tests (helpers that write files: ``voc_fixtures``)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> Path:
    """8 train + 4 val synthetic images of 96 px."""
    from retinanet.data import make_synthetic

    root = tmp_path_factory.mktemp("syn") / "data"
    make_synthetic(root, num_train=8, num_val=4, image_size=96, seed=0)
    return root
