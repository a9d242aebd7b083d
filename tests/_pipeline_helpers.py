"""Shared by test_pipeline.py and test_cli.py: a tiny real run, and float64 references written from the definitions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# A small real run: the paper's MLP on scikit-learn's digits, 80% random corruption, two epochs of the fast preset.
RUN_KWARGS: dict[str, Any] = {"model": "mlp", "dataset": "digits", "corrupt": 0.8, "seed": 0, "max_epochs": 2,
                              "layers": ["input", "fc2"], "probes": ("masc", "ncm"), "progress": False,
                              "keep_checkpoints": "dense"}  # the dynamics tests probe epochs 0 and 2


# The session's one finished pipeline run (conftest.py's ``digits_run``): RUN_KWARGS, plus the linear probe and the
# fitted probes kept in <run>/probes, so that the pipeline, controls and probes-as-artifacts tests read one run.
SHARED_RUN_KWARGS: dict[str, Any] = {**RUN_KWARGS, "probes": ("masc", "ncm", "linear"), "save_probes": True}


# The CLI's run of the session (conftest.py's ``digits_cli_run``): ``masc-probe`` with these flags, one epoch of the
# same training as RUN_KWARGS (the same model, data, corruption, seed and checkpoint policy), so that the pipeline's
# resume test continues it to RUN_KWARGS' two epochs.
CLI_RUN_ARGV = ["--max-epochs", "1", "--layers", "input,fc1", "--probes", "masc,ncm", "--keep-checkpoints", "dense"]


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under *folder*: what a test that only reads it leaves."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def split_arrays(split: str, *, corrupt: float = 0.0, seed: int = 0) -> dict[str, np.ndarray]:
    """Images (n, C, H, W) and the label columns of the built-in digits, read straight from the dataset rows."""
    from masc_probe.data import load_data

    ds = load_data("digits", split=split, corrupt=corrupt, seed=seed)
    rows = ds[:]
    return {"image": rows["image"].numpy().astype(np.float64), "label": rows["label"].numpy(),
            "true_label": rows["true_label"].numpy()}


@torch.no_grad()
def activations(model: nn.Module, layer: str, images: np.ndarray) -> np.ndarray:
    """The flattened output of module *layer* (or the input), through a plain forward hook; float64 (n, d)."""
    x = torch.as_tensor(images, dtype=torch.float32)
    if layer == "input":
        return images.reshape(len(images), -1)
    seen: list[torch.Tensor] = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        model.eval()(x)
    finally:
        handle.remove()
    return seen[0].reshape(len(images), -1).double().numpy()


@torch.no_grad()
def model_accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    logits = model.eval()(torch.as_tensor(images, dtype=torch.float32))
    return float((logits.argmax(1).numpy() == labels).mean())


def masc_reference(train: np.ndarray, y: np.ndarray, test: np.ndarray, *, k: int = 10,
                   t: float = 0.99) -> tuple[np.ndarray, list[int]]:
    """MASC from DESIGN.md in float64: per class the top eigenvectors of the uncentered scatter X_cᵀX_c (taken as
    the right singular vectors of X_c, whose squared singular values are its eigenvalues), k_c = #{r_i <= t} + 1,
    predict argmax_c ‖B_c x‖ / ‖x‖."""
    from threadpoolctl import threadpool_limits

    cos = np.zeros((len(test), k))
    norms = np.linalg.norm(test, axis=1)
    counts = []
    with threadpool_limits(1):  # a 2-thread LAPACK crawls on a busy 2-core machine (DESIGN.md)
        for c in range(k):
            _, s, vt = np.linalg.svd(train[y == c], full_matrices=False)
            w = s**2
            rank = int((s > s[0] * max(train.shape) * np.finfo(float).eps).sum())
            kc = min(int((np.cumsum(w) / w.sum() <= t).sum()) + 1, rank)
            counts.append(kc)
            proj = np.linalg.norm(test @ vt[:kc].T, axis=1)
            cos[:, c] = np.divide(proj, norms, out=np.zeros_like(proj), where=norms > 0)
    return cos.argmax(1), counts


def ncm_reference(train: np.ndarray, y: np.ndarray, test: np.ndarray, *, k: int = 10) -> np.ndarray:
    """Nearest class mean by cosine similarity, float64."""
    means = np.stack([train[y == c].mean(0) for c in range(k)])
    sim = (test @ means.T) / (np.linalg.norm(test, axis=1, keepdims=True) * np.linalg.norm(means, axis=1) + 1e-300)
    return sim.argmax(1)
