"""Shared test set-up: no network, an isolated Hugging Face cache, quiet progress bars.

The environment is set before anything imports huggingface_hub or datasets, which read it at import time.
"""

from __future__ import annotations

import os
import tempfile

_HF_HOME = tempfile.mkdtemp(prefix="masc-probe-test-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_MNIST = SHARED / "data" / "mnist"


@pytest.fixture
def shared_mnist() -> Path:
    """The full MNIST idx folder beside the checkout; the test is skipped when it is absent."""
    if not (SHARED_MNIST / "train-images.idx3-ubyte.gz").exists():
        pytest.skip(f"{SHARED_MNIST} is absent")
    return SHARED_MNIST
