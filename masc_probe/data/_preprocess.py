"""Image preprocessing for :mod:`masc_probe.data`: decode, adapt channels and size, normalize — batched and lazy.

Stored images stay as they are (PNG bytes, PIL images or raw uint8 buffers); a batch is converted only when a
DataLoader asks for it. Without a resize the whole conversion is one lookup-table gather per channel in numpy, which
keeps a full MNIST epoch at about a second on one core (torch's elementwise ops on small batches ran ~20× slower here
on a busy 2-core machine, from thread contention).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from masc_probe.errors import InputError

logger = logging.getLogger(__name__)

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
PAPER_NORMALIZATION = (0.5, 0.5)
# ITU-R 601-2 luma weights, the ones PIL's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Preprocessing:
    """What is done to every image between storage and the model.

    Order: scale to [0, 1] (divide by ``scale``), RGB → luminance if the model takes one channel, resize to
    ``input_size`` if it differs, repeat a single channel if the model takes three, then ``(x - mean) / std``.
    """

    source_size: tuple[int, int, int]  # (C, H, W) of the stored images
    input_size: tuple[int, int, int]  # (C, H, W) the model receives
    mean: tuple[float, ...]  # one per model channel, on the [0, 1] scale
    std: tuple[float, ...]
    scale: float = 255.0  # stored value of full intensity: 255 for bytes, 16 for scikit-learn's digits
    interpolation: str = "bilinear"  # only used when the sizes differ; antialiased, clamped to [0, 1]
    normalization: str = "paper"  # where mean/std came from: "paper" (0.5, 0.5), "data_config" or "custom"

    @property
    def channels(self) -> str | None:
        """``"repeat"``, ``"luminance"`` or None, for the channel adaptation done."""
        src, dst = self.source_size[0], self.input_size[0]
        return None if src == dst else ("repeat" if src == 1 else "luminance")

    @property
    def resize(self) -> bool:
        """Whether images are resized."""
        return self.source_size[1:] != self.input_size[1:]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record for reports and model configs."""
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "normalization": self.normalization,
            "input_size": list(self.input_size),
            "source_size": list(self.source_size),
            "resize": self.interpolation if self.resize else None,
            "channels": self.channels,
            "pixel_scale": self.scale,
        }

    def apply(self, images: np.ndarray) -> torch.Tensor:
        """Convert stored pixels, shape (n, C_src, H_src, W_src) uint8, to model input (n, C, H, W) float32."""
        n, c_src = images.shape[:2]
        c_dst, h, w = self.input_size
        if not self.resize and c_src in (1, c_dst):
            levels = np.arange(256, dtype=np.float32)[None, :] / np.float32(self.scale)
            lut = (levels - _col(self.mean)) / _col(self.std)  # (C, 256): stored value → normalized value
            out = np.empty((n, c_dst, h, w), dtype=np.float32)
            for c in range(c_dst):
                out[:, c] = lut[c][images[:, c if c_src == c_dst else 0]]
            return torch.from_numpy(out)
        x = images.astype(np.float32) / np.float32(self.scale)
        if c_src == 3 and c_dst == 1:
            x = np.einsum("nchw,c->nhw", x, _LUMA)[:, None]
        t = torch.from_numpy(np.ascontiguousarray(x))
        if self.resize:
            smooth = self.interpolation != "nearest"
            t = torch.nn.functional.interpolate(
                t, size=(h, w), mode=self.interpolation, antialias=smooth, align_corners=False if smooth else None
            ).clamp_(0.0, 1.0)
        if t.shape[1] != c_dst:
            t = t.expand(-1, c_dst, -1, -1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return ((t - mean) / std).contiguous()


def _col(values: tuple[float, ...]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)[:, None]


def _per_channel(name: str, value: Any, channels: int) -> tuple[float, ...]:
    vals = tuple(float(v) for v in (value if isinstance(value, Sequence) else (value,)))
    if len(vals) == 3 and channels == 1:
        # An RGB statistic for a one-channel model (e.g. a timm config with in_chans=1): the luminance of the image
        # is close to the mean of its channels, so their mean is the nearest single value.
        logger.info("using the mean of the three %s values for a one-channel model", name)
        vals = (sum(vals) / 3,)
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise InputError(f"{name} needs 1 or {channels} values for {channels} channels, got {len(vals)}: {vals}")
    return vals


def resolve_preprocessing(
    source_size: tuple[int, int, int],
    *,
    normalize: tuple[Any, Any] | Mapping[str, Any],
    input_size: int | Sequence[int] | None,
    in_chans: int | None,
    scale: float,
) -> Preprocessing:
    """Combine the data's own size with the user's wishes (see :func:`masc_probe.data.load_data`).

    Raises:
        InputError: Malformed ``normalize``/``input_size``/``in_chans``, a zero std, an unknown interpolation, or a
            channel change other than 1 ↔ 3.
    """
    config: Mapping[str, Any] = {}
    if isinstance(normalize, Mapping):
        config = normalize
        if "mean" not in config or "std" not in config:
            raise InputError(f"a data config needs 'mean' and 'std', got keys {sorted(config)}")
        mean, std, origin = config["mean"], config["std"], "data_config"
    elif isinstance(normalize, Sequence) and len(normalize) == 2 and not isinstance(normalize, str):
        mean, std = normalize
        origin = "paper" if (mean, std) == PAPER_NORMALIZATION else "custom"
    else:
        raise InputError(f"normalize must be (mean, std) or a timm data config dict, got {normalize!r}")

    channels, (h, w) = source_size[0], source_size[1:]
    cfg_size = config.get("input_size")
    if cfg_size is not None:
        channels, h, w = (int(v) for v in cfg_size)
    if input_size is not None:
        scalar = isinstance(input_size, (int, np.integer))
        size = (int(input_size),) * 2 if scalar else tuple(int(v) for v in input_size)  # type: ignore[union-attr]
        if len(size) == 3:
            if in_chans is not None and int(in_chans) != size[0]:
                raise InputError(f"in_chans={in_chans} contradicts input_size={size}")
            channels, size = size[0], size[1:]
        if len(size) != 2 or min(size) < 1:
            raise InputError(f"input_size must be an int, (H, W) or (C, H, W) of positive ints, got {input_size!r}")
        h, w = size
    if in_chans is not None:
        channels = int(in_chans)
    if source_size[0] != channels and {source_size[0], channels} != {1, 3}:
        raise InputError(f"can convert images between 1 and 3 channels only, got {source_size[0]} → {channels}")

    means, stds = _per_channel("mean", mean, channels), _per_channel("std", std, channels)
    if min(stds) <= 0:
        raise InputError(f"std must be positive, got {stds}")
    interpolation = str(config.get("interpolation", "bilinear"))
    if interpolation not in INTERPOLATIONS:
        raise InputError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    return Preprocessing(
        source_size=tuple(int(v) for v in source_size),  # type: ignore[arg-type]
        input_size=(channels, h, w),
        mean=means,
        std=stds,
        scale=float(scale),
        interpolation=interpolation,
        normalization=origin,
    )


def image_to_array(value: Any, channels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one stored image (PIL image, ``{"bytes", "path"}`` dict, or uint8 array (H, W[, C])) to (C, H, W) uint8.

    Images whose size differs from ``size`` (H, W) are resized to it, so that a batch stacks.

    Raises:
        InputError: The value is not an image or a uint8 array.
    """
    from PIL import Image

    if isinstance(value, dict):
        value = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
    elif not isinstance(value, Image.Image):
        arr = np.asarray(value)
        # Array features come back as nested lists, i.e. int64: accept any integers that fit in a byte.
        fits = arr.dtype == np.uint8 or (np.issubdtype(arr.dtype, np.integer) and arr.size and 0 <= arr.min()
                                         and arr.max() <= 255)
        if not fits or arr.ndim not in (2, 3):
            raise InputError(f"expected an image or a uint8 array (H, W[, C]), got a {arr.dtype} array {arr.shape}")
        arr = arr.astype(np.uint8, copy=False)
        value = Image.fromarray(arr if arr.ndim == 2 or arr.shape[2] > 1 else arr[:, :, 0])
    image = value.convert("L" if channels == 1 else "RGB")
    if size is not None and (image.height, image.width) != tuple(size):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(image, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def decode_batch(values: list[Any], source_size: tuple[int, int, int], raw: bool) -> np.ndarray:
    """Stack stored images into (n, C, H, W) uint8; ``raw`` means each value holds C·H·W bytes in C order."""
    if raw:
        return np.frombuffer(b"".join(values), dtype=np.uint8).reshape((len(values), *source_size))
    if not values:
        return np.empty((0, *source_size), dtype=np.uint8)
    return np.stack([image_to_array(v, source_size[0], source_size[1:]) for v in values])


class BatchTransform:
    """``Dataset.with_transform`` callable: stored columns → torch tensors (image normalized, labels int64)."""

    def __init__(self, preprocessing: Preprocessing, *, raw: bool) -> None:
        self.preprocessing = preprocessing
        self.raw = raw

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key, values in batch.items():
            if key == "image":
                out[key] = self.preprocessing.apply(decode_batch(values, self.preprocessing.source_size, self.raw))
            else:
                out[key] = torch.from_numpy(np.asarray(values, dtype=np.int64))
        return out
