"""Fixtures for the shared data and models that some tests need.

The data root is ``zf.data.default_data_root()`` (``ZF_DATA`` overrides the shipped location), the models folder
``ZF_MODELS`` or ``<shared>/models`` next to the data.  Where one is missing, a test that needs it skips and says
what is missing and how to point at it; when the environment variable ``CI`` is set (``CI=true`` in CI), it fails
instead, so that a CI machine without the data cannot pass by skipping.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

import zf.edge.runtime  # noqa: F401  (registers the structured configs the YAML files use)
from zf.data import DEFAULT_DATA_ROOT, default_data_root

matplotlib.use("Agg")  # as the scripts do: figures go to files

#: Where the shared model files live unless ``ZF_MODELS`` says otherwise (``shared/models`` beside ``shared/data``).
DEFAULT_MODELS_ROOT = DEFAULT_DATA_ROOT.parent.parent / "models"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str) -> None:
    """Skip the test for a missing shared resource, or fail it when ``CI`` is set."""
    if in_ci():
        pytest.fail(f"{what} (CI is set, so missing shared data fails instead of skipping)", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="session")
def imagenette() -> Path:
    """The Imagenette root with a val/ split; skips (fails under CI) where it is missing."""
    root = default_data_root()  # ZF_DATA or the shipped path
    if not (root / "val").is_dir():
        missing(f"Imagenette val split not found at {root / 'val'}: set ZF_DATA to the folder holding train/ and "
                "val/")
    return root


@pytest.fixture(scope="session")
def imagenette_val(imagenette) -> Path:
    return imagenette / "val"


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """The folder with the shared pretrained weights (``vgg16_imagenet_features.pth``); skips (fails under CI)
    where it is missing."""
    root = Path(os.environ.get("ZF_MODELS", DEFAULT_MODELS_ROOT))
    if not (root / "vgg16_imagenet_features.pth").is_file():
        missing(f"shared model weights not found at {root / 'vgg16_imagenet_features.pth'}: set ZF_MODELS to the "
                "folder holding them")
    return root
