"""Every check a loaded ProbeRunner passes, each failure one line at the door: files that lie inside the saved folder
and exist, each probe's arrays against its metadata (one prediction on a row of ones), its width against the
layer's saved width and its classes against the saved class list, a random reducer's projections regenerated alike,
and (on the first batch) rows of the saved width (:class:`WidthCheck`).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masc_probe._hub import one_line
from masc_probe.errors import InputError
from masc_probe.probes import probe_from_state
from masc_probe.runner._cache import Reducer

__all__ = ["WidthCheck", "check_projections", "entry_path", "rebuilt_probe"]


def check_projections(saved: dict[str, Any], reducer: Reducer) -> None:
    """Refuse a random reducer whose projections regenerate differently here than where they were saved.

    Raises:
        InputError: A projection of another shape or sum.
    """
    for layer, (d, out_dim, total) in saved["reducer"].get("projections", {}).items():
        p = reducer.projection(layer, d)
        if p.shape != (d, out_dim) or not np.isclose(float(p.double().sum()), total, rtol=0, atol=1e-6):
            raise InputError(f"the random projection of layer {layer!r} regenerated differently here (torch "
                             f"{torch.__version__}); save with reducer=None or 'gap' to move across versions")


def entry_path(directory: Path, entry: Mapping[str, Any]) -> Path:
    """The safetensors file a ``runner.json`` entry names, checked to lie inside *directory* and to exist.

    Raises:
        InputError: A name outside the folder, not ending in ``.safetensors``, or a file that is missing.
    """
    name = entry.get("file")
    if not isinstance(name, str) or not name.endswith(".safetensors"):
        raise InputError(f"runner.json must name .safetensors files, got {name!r}")
    # A lexical check, not resolve(): the huggingface_hub cache keeps each file as a symlink into its blobs/ folder.
    folder = Path(os.path.normpath(os.path.abspath(directory)))
    path = Path(os.path.normpath(folder / name))
    if folder not in path.parents:
        raise InputError(f"runner.json must name files inside {str(directory)!r}, got {name!r}")
    if not path.is_file():
        raise InputError(f"runner.json names {name}, which is missing in {str(directory)!r}")
    return path


def rebuilt_probe(key: tuple[str, str, str], arrays: dict[str, torch.Tensor], entry: dict[str, Any],
                  device: torch.device, *, width: int | None, classes: Collection[Any]) -> Any:
    """The probe *entry* describes, rebuilt from *arrays* and checked by one prediction on a row of ones."""
    from masc_probe.runner._evaluate import predict_rows

    what = f"the saved probe {key} ({entry.get('file')})"
    try:
        est = probe_from_state(arrays, entry, device)
        d = int(est.n_features_in_)
        predict_rows(key[1], est, torch.ones(1, d, device=device))
    except InputError as exc:
        raise InputError(f"{what} must load as its metadata says, got: {exc}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        raise InputError(f"{what} must hold arrays that fit its metadata, got {type(exc).__name__}: "
                         f"{one_line(str(exc))}") from None
    if width is not None and d != width:
        raise InputError(f"{what} must read rows of the layer's saved width {width}, got a probe of width {d}")
    extra = [c for c in np.asarray(est.classes_).tolist() if c not in set(classes)]
    if extra:
        raise InputError(f"{what} must predict the saved classes {list(classes)}, got also {extra}")
    return est


class WidthCheck:
    """A runner's reducer that refuses rows of another width than the saved probes of their layer were fitted on.

    A loaded runner wraps its reducer in this, so that a model whose layers carry the saved names but other shapes
    (another architecture, input size or reducer) fails on the first batch with one line naming the layer, not
    deep inside a probe.
    """

    def __init__(self, reducer: Reducer, widths: Mapping[str, int]) -> None:
        self._reducer, self._widths = reducer, dict(widths)

    def __call__(self, layer: str, act: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        rows = self._reducer(layer, act, *args, **kwargs)
        want = self._widths.get(layer)
        if want is not None and rows.shape[-1] != want:
            raise InputError(f"layer {layer!r} must give rows of width {want} (what the saved probes were fitted "
                             f"on), got width {rows.shape[-1]} from activations of shape {tuple(act.shape)}: "
                             "another model or input size")
        return rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reducer, name)
