"""Tiny seeded models and batches for the runner tests (also imported by the 2-process script)."""

from __future__ import annotations

import torch
from torch import nn

N_CLASSES = 3


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(),
                         nn.Linear(24, N_CLASSES))


def cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 2 * 2, 10), nn.ReLU(), nn.Linear(10, N_CLASSES))


class Untraceable(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it, so layers are read through hooks."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 20), nn.ReLU())
        self.head = nn.Linear(20, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        if float(h.sum()) > 0:  # data-dependent branch
            h = h * 1.0
        return self.head(h)


def data(n: int, *, seed: int = 0, flip_every: int = 4, shape: tuple[int, ...] = (1, 4, 4)
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs with a class signal, true labels, and corrupted labels (every flip_every-th one shifted)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % N_CLASSES
    y = y[torch.randperm(n, generator=gen)]
    x = torch.randn(n, *shape, generator=gen).abs()
    x.view(n, -1)[torch.arange(n), y] += 3.0  # one bright input per class: well-separated angles
    yc = y.clone()
    yc[::flip_every] = (yc[::flip_every] + 1) % N_CLASSES
    return x, yc, y


def tuples(x: torch.Tensor, yc: torch.Tensor, y: torch.Tensor, batch: int, *, both: bool = True) -> list[tuple]:
    return [(x[i:i + batch], yc[i:i + batch], y[i:i + batch]) if both else (x[i:i + batch], y[i:i + batch])
            for i in range(0, len(x), batch)]
