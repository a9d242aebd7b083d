"""Shared test set-up: no network, an isolated Hugging Face cache, quiet progress bars, and where the real data is.

The environment is set before anything imports huggingface_hub or datasets, which read it at import time.

The real datasets (MNIST's idx files, ...) live outside the repository, in one folder named by ONE setting:
``MASC_PROBE_SHARED_DATA`` (default: ``shared/data`` beside the checkout, i.e. ``../shared/data``). Outside CI a test
that needs a missing dataset is skipped, and the skip names the folder and the setting; under CI (``CI=true``, which
``.ci/run`` sets) a missing folder fails the test, so CI never skips them silently.
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

SHARED_DATA_SETTING = "MASC_PROBE_SHARED_DATA"
SHARED_DATA = Path(os.environ.get(SHARED_DATA_SETTING) or Path(__file__).resolve().parents[2] / "shared" / "data")
SHARED_MNIST = SHARED_DATA / "mnist"  # tests that shell out (test_reproduce_paper) pass the folder on


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def shared_dataset(name: str, marker: str) -> Path:
    """``SHARED_DATA / name``, checked to hold *marker*; skipped outside CI, failed under CI, when it does not."""
    folder = SHARED_DATA / name
    if not (folder / marker).is_file():
        reason = (f"real data {folder / marker} is absent: set {SHARED_DATA_SETTING} to the folder that holds "
                  f"{name}/ (now {SHARED_DATA})")
        if _in_ci():
            pytest.fail(f"{reason}; CI=true, so a missing dataset is an error, not a skip", pytrace=False)
        pytest.skip(reason)
    return folder


@pytest.fixture
def shared_mnist() -> Path:
    """The full MNIST idx folder (``$MASC_PROBE_SHARED_DATA/mnist``)."""
    return shared_dataset("mnist", "train-images.idx3-ubyte.gz")


@pytest.fixture
def keep_logger_levels():
    """Restore the levels of the loggers the benchmark script quiets (as a script may) after a test that ran it."""
    import logging

    names = ("", "accelerate", "masc_probe", "reproduce_paper")
    saved = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in saved.items():
        logging.getLogger(n).setLevel(level)
