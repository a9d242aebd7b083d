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
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from masc_probe.errors import InputError

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


def _pooled(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    """Output length of a convolution or max-pool along one axis (floor mode, as torch computes it)."""
    return (size + 2 * padding - kernel) // stride + 1


class PaperAlexNet(PaperModel):
    """The paper's AlexNet, in the two variants its authors ran, chosen by the input size:

    * inputs smaller than 64×64 (CIFAR-100's 32×32): conv 3×3 stride 2 padding 1 (64) → max-pool 3/2 →
      conv 3×3 (192) → max-pool 3/2 → conv 3×3 (384) → conv 3×3 (256) → conv 3×3 (256) → max-pool 3/2; the maps
      of a 32×32 input go 16 → 7 → 3 → 1;
    * inputs of 64×64 and more (Tiny ImageNet): conv 11×11 stride 4 padding 2 (64) → max-pool 3/2 → conv 5×5
      padding 2 (192) → max-pool 3/2 → the same three 3×3 convolutions → max-pool 3/2; a 64×64 input goes
      15 → 7 → 3 → 1.

    Both end in flatten → 4096 → 4096 → classes (ReLU after the two hidden layers, no dropout: the authors' forward
    skips the dropout layers it defines). The flattened width is 256·h·w of the last map: 256 at the paper's two
    sizes. The authors trained the Tiny ImageNet variant with batch 500 on unnormalized pixels (the ``paper``
    preset's batch size; the data's normalization is the caller's choice).

    Args:
        num_classes: Output width.
        in_chans: Image channels C.
        input_size: Image size ``(H, W)`` (or an int, or ``(C, H, W)``); it picks the variant and the flattened
            width. At least 29×29 for the small variant, whose three max-pools need maps of 3 or more.

    Raises:
        InputError: An input too small for the variant's max-pools.

    >>> PaperAlexNet(input_size=32).variant, PaperAlexNet(input_size=64).variant
    ('cifar', 'tiny-imagenet')
    """

    SPEC = "alexnet"
    PROBE_LAYERS = ("flatten", "fc1", "fc2")
    TINY_IMAGENET_FROM = 64  # inputs at least this tall and wide get the Tiny ImageNet variant

    def __init__(
        self, num_classes: int = 100, in_chans: int = 3, input_size: int | Sequence[int] = (32, 32)
    ) -> None:
        super().__init__()
        self.input_size = _size2(input_size)
        tiny = min(self.input_size) >= self.TINY_IMAGENET_FROM
        self.variant = "tiny-imagenet" if tiny else "cifar"
        stem, stem_geometry = (
            (nn.Conv2d(in_chans, 64, 11, stride=4, padding=2), (11, 4, 2)) if tiny
            else (nn.Conv2d(in_chans, 64, 3, stride=2, padding=1), (3, 2, 1))
        )  # fmt: skip
        second = nn.Conv2d(64, 192, 5, padding=2) if tiny else nn.Conv2d(64, 192, 3, padding=1)
        self.features = nn.Sequential(
            stem,
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2),
            second,
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2),
        )
        maps = []
        for size in self.input_size:
            size = _pooled(size, *stem_geometry)
            for _ in range(3):  # the convolutions between the pools keep the size
                if size < 3:
                    raise InputError(f"the paper AlexNet ({self.variant} variant) needs inputs of at least 29×29 "
                                     f"so that its three 3×3 max-pools have maps to pool, got {self.input_size}")
                size = _pooled(size, 3, 2)
            maps.append(size)
        self.flatten = nn.Flatten()
        self.flat_features = 256 * maps[0] * maps[1]
        self.fc1 = _Dense(self.flat_features, 4096)
        self.fc2 = _Dense(4096, 4096)
        self.head = nn.Linear(4096, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.features(x))
        return self.head(self.fc2(self.fc1(x)))


class _BasicBlock(nn.Module):
    """ResNet basic block with its two ReLUs as modules of their own: ``relu1`` after the first convolution (the
    block's inner activation, a probe point of the paper) and ``relu2`` after the residual add (the block's
    output). Nothing works in place, so a tap on the block sees its own output."""

    def __init__(self, in_chans: int, out_chans: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chans)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_chans != out_chans:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chans, out_chans, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chans)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class PaperResNet18(PaperModel):
    """ResNet-18 for small images as the paper trains it: a 3×3 stride-1 stem and a 3/2 max-pool, four stages of two
    basic blocks (64, 128, 256, 512 channels), global average pooling, then the classifier.

    The paper's nine probe points (``PROBE_LAYERS``) are the max-pool, layer1.0's inner ReLU (``layer1.0.relu1``),
    layer1.0's output, layer1.1's inner ReLU, the outputs of the four stages and the pooled features (``flatten``);
    the authors' code reads the same values as torchvision's FX nodes ``maxpool``, ``layer1.0.relu``,
    ``layer1.0.relu_1``, ``layer1.1.relu``, ``layer1.1.relu_1``, …, ``view``. The ReLUs hold no weights, so the
    state dict is that of a block with functional ReLUs. A 32×32 input gives maps of 64·16·16 = 16,384 values
    after the max-pool and in layer1, 8,192 in layer2, 4,096 in layer3, 2,048 in layer4 and 512 pooled.

    Args:
        num_classes: Output width.
        in_chans: Image channels C.
        input_size: Image size, recorded in the config (global pooling makes the model size-agnostic).
    """

    SPEC = "resnet18-cifar"
    PROBE_LAYERS = ("maxpool", "layer1.0.relu1", "layer1.0", "layer1.1.relu1", "layer1", "layer2", "layer3",
                    "layer4", "flatten")

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
