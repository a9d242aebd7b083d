"""The architectures of the MASC paper (Ketha & Ramaswamy, arXiv 2501.14687), as its authors' code builds them.

Every model names its parts so that probe reports read like the paper: ``input``, ``flatten``, ``fc1``, ``fc2``, …
A ``fc<i>`` module is a linear layer *followed by its ReLU*, so its output is the hidden activation the paper probes;
``head`` is the final linear layer (the logits). ``PROBE_LAYERS`` on each class lists the paper's probe points.
No module works in place, so a hook on any of them sees a value that later operations cannot change.

The classes subclass :class:`huggingface_hub.PyTorchModelHubMixin`: their ``__init__`` arguments are the whole
``config.json``, the weights are ``model.safetensors``, and ``save_pretrained`` / ``from_pretrained`` work as for any
mixin model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

_REPO_URL = "https://github.com/masc-probe/masc-probe"


def _size2(input_size: int | Sequence[int]) -> tuple[int, int]:
    """Accept ``28``, ``(28, 28)`` or ``(C, 28, 28)`` and return ``(H, W)``."""
    if isinstance(input_size, int):
        return input_size, input_size
    size = tuple(int(s) for s in input_size)
    return (size[-2], size[-1]) if len(size) >= 2 else (size[0], size[0])


class _Dense(nn.Module):
    """A linear layer and its ReLU, so that the module's output is the post-activation value the paper probes."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


def _conv_block(in_chans: int, out_chans: int) -> nn.Sequential:
    """Two 3×3 convolutions (padding 1) with ReLUs, then a 2×2 max-pool, as in the paper's CNN."""
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(out_chans, out_chans, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class PaperModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="masc-probe",
    repo_url=_REPO_URL,
    paper_url="https://arxiv.org/abs/2501.14687",
    tags=["masc-probe", "memorization", "label-noise"],
):
    """Base class: the spec name, the paper's probe points, and the ``head`` every paper model ends with."""

    SPEC: ClassVar[str] = ""
    PROBE_LAYERS: ClassVar[tuple[str, ...]] = ()
    head: nn.Linear


class PaperMLP(PaperModel):
    """The paper's MLP: input → 128 → 512 → 2048 → 2048 → classes, ReLU between.

    Args:
        num_classes: Output width.
        in_chans: Image channels C.
        input_size: Image size ``(H, W)`` (or an int, or ``(C, H, W)``); the input width is C·H·W.

    >>> PaperMLP(num_classes=10, in_chans=1, input_size=(8, 8))(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    SPEC = "mlp"
    PROBE_LAYERS = ("input", "fc1", "fc2", "fc3", "fc4")
    WIDTHS: ClassVar[tuple[int, ...]] = (128, 512, 2048, 2048)

    def __init__(self, num_classes: int = 10, in_chans: int = 1, input_size: int | Sequence[int] = (28, 28)) -> None:
        super().__init__()
        height, width = _size2(input_size)
        self.input = nn.Identity()
        self.flatten = nn.Flatten()
        widths = (in_chans * height * width, *self.WIDTHS)
        for i in range(len(self.WIDTHS)):
            self.add_module(f"fc{i + 1}", _Dense(widths[i], widths[i + 1]))
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.input(x))
        x = self.fc4(self.fc3(self.fc2(self.fc1(x))))
        return self.head(x)


class PaperCNN(PaperModel):
    """The paper's CNN: convs 16,16 → pool → 32,32 → pool → 64,64 → pool → flatten → 250 → 250 → 250 → out.

    The flattened width is 64·⌊H/8⌋·⌊W/8⌋: 576 for 28×28 inputs, 1024 for 32×32. The last layer has no bias.

    Args:
        num_classes: Output width.
        in_chans: Image channels C.
        input_size: Image size ``(H, W)`` (or an int, or ``(C, H, W)``); at least 8×8.
    """

    SPEC = "cnn"
    PROBE_LAYERS = ("input", "flatten", "fc1", "fc2", "fc3")

    def __init__(self, num_classes: int = 10, in_chans: int = 1, input_size: int | Sequence[int] = (28, 28)) -> None:
        super().__init__()
        height, width = _size2(input_size)
        self.input = nn.Identity()
        self.block1 = _conv_block(in_chans, 16)
        self.block2 = _conv_block(16, 32)
        self.block3 = _conv_block(32, 64)
        self.flatten = nn.Flatten()
        self.flat_features = 64 * (height // 8) * (width // 8)
        self.fc1 = _Dense(self.flat_features, 250)
        self.fc2 = _Dense(250, 250)
        self.fc3 = _Dense(250, 250)
        self.head = nn.Linear(250, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.input(x))))
        x = self.flatten(x)
        return self.head(self.fc3(self.fc2(self.fc1(x))))


class PaperAlexNet(PaperModel):
    """The paper's small-input AlexNet: five convolutions with max-pools, 256 channels pooled to 1×1, then
    flatten(256) → 4096 → 4096 → classes.

    The convolutions are those of the usual CIFAR AlexNet (11×11/4, 5×5, then three 3×3); a 32×32 input leaves
    the last max-pool at 1×1, and an adaptive max-pool brings larger inputs (Tiny ImageNet's 64×64) there too.

    Args:
        num_classes: Output width.
        in_chans: Image channels C.
        input_size: Image size, recorded in the config (the adaptive pool makes the model size-agnostic).
    """

    SPEC = "alexnet"
    PROBE_LAYERS = ("flatten", "fc1", "fc2")

    def __init__(
        self, num_classes: int = 100, in_chans: int = 3, input_size: int | Sequence[int] = (32, 32)
    ) -> None:
        super().__init__()
        self.input_size = _size2(input_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 64, 11, stride=4, padding=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.fc1 = _Dense(256, 4096)
        self.fc2 = _Dense(4096, 4096)
        self.head = nn.Linear(4096, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.features(x)))
        return self.head(self.fc2(self.fc1(x)))


class _BasicBlock(nn.Module):
    """ResNet basic block. The residual add and ReLU are out of place, so a tap on the block sees its own output."""

    def __init__(self, in_chans: int, out_chans: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chans)
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_chans != out_chans:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chans, out_chans, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chans)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PaperResNet18(PaperModel):
    """ResNet-18 for small images as the paper trains it: a 3×3 stride-1 stem and a max-pool, four stages of two
    basic blocks (64, 128, 256, 512 channels), global average pooling, then the classifier.

    Args:
        num_classes: Output width.
        in_chans: Image channels C.
        input_size: Image size, recorded in the config (global pooling makes the model size-agnostic).
    """

    SPEC = "resnet18-cifar"
    PROBE_LAYERS = ("maxpool", "layer1.0", "layer1.1", "layer2", "layer3", "layer4", "flatten")

    def __init__(self, num_classes: int = 10, in_chans: int = 3, input_size: int | Sequence[int] = (32, 32)) -> None:
        super().__init__()
        self.input_size = _size2(input_size)
        self.conv1 = nn.Conv2d(in_chans, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        chans = 64
        for i, (width, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2))):
            stage = nn.Sequential(_BasicBlock(chans, width, stride), _BasicBlock(width, width))
            self.add_module(f"layer{i + 1}", stage)
            chans = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.head(self.flatten(self.avgpool(x)))


PAPER_MODELS: dict[str, type[PaperModel]] = {
    cls.SPEC: cls for cls in (PaperMLP, PaperCNN, PaperAlexNet, PaperResNet18)
}
