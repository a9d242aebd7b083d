"""scikit-learn's kNN, LDA and QDA as probes: the estimators themselves, plus saving without pickle.

Each subclass adds only :meth:`to_state` / :meth:`from_state` (arrays for safetensors, parameters as JSON) and
:meth:`resident_bytes`; fitting and predicting are scikit-learn's own. kNN has no state but its training rows, so it
saves them and refits on load; LDA and QDA save the arrays and numbers ``fit`` set on them. The subclasses keep
scikit-learn's class names, so that they read (and save their ``class``) as the estimators they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn import discriminant_analysis, neighbors
from sklearn.utils.validation import check_is_fitted

from masc_probe.errors import InputError
from masc_probe.probes._base import integer_classes, json_params

__all__ = ["KNeighborsClassifier", "LinearDiscriminantAnalysis", "QuadraticDiscriminantAnalysis"]


def _meta(est: Any) -> dict[str, Any]:
    return {"class": type(est).__name__, "params": json_params(est.get_params(), type(est).__name__)}


class KNeighborsClassifier(neighbors.KNeighborsClassifier):
    """scikit-learn's ``KNeighborsClassifier`` (the registry's ``knn`` uses k=5 and the cosine metric)."""

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The training rows and labels (kNN has no other state) and the parameters.

        Raises:
            InputError: Labels that are not integers, or parameters JSON cannot hold (a callable metric).
        """
        check_is_fitted(self)
        classes = integer_classes(self.classes_)
        # The fitted neighbours index keeps the rows it searches and their encoded labels; nothing else rebuilds it.
        rows = np.ascontiguousarray(self._fit_X, dtype=np.float32)
        return {"classes": torch.from_numpy(classes), "fit_X": torch.from_numpy(rows),
                "y": torch.from_numpy(classes[self._y])}, _meta(self)

    @classmethod
    def from_state(cls, arrays: dict[str, torch.Tensor], meta: dict[str, Any],
                   device: Any = None) -> KNeighborsClassifier:
        """The probe refitted on the saved rows (it predicts as the saved one)."""
        return cls(**meta.get("params", {})).fit(arrays["fit_X"].numpy(), arrays["y"].numpy())

    def resident_bytes(self) -> int:
        """Bytes of the training rows the probe searches."""
        return int(getattr(getattr(self, "_fit_X", None), "nbytes", 0))


class _Fitted:
    """Saving for scikit-learn estimators whose fitted state is arrays and numbers set by ``fit``."""

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Every attribute ``fit`` set, as arrays (numeric arrays, lists of them) or JSON numbers.

        Raises:
            InputError: Labels that are not integers, or an attribute that only pickle could save.
        """
        check_is_fitted(self)
        meta = _meta(self)
        params = self.get_params()
        arrays = {"classes": torch.from_numpy(integer_classes(self.classes_))}
        numbers: dict[str, Any] = {}
        for name, value in vars(self).items():
            if name in params or name == "classes_":
                continue
            if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
                arrays[f"attr.{name}"] = torch.from_numpy(np.ascontiguousarray(value))
            elif isinstance(value, list) and all(isinstance(v, np.ndarray) for v in value):
                for i, v in enumerate(value):
                    arrays[f"list.{name}.{i}"] = torch.from_numpy(np.ascontiguousarray(v))
                numbers[name] = {"list_of_arrays": len(value)}
            elif value is None or isinstance(value, (bool, int, float, str, np.integer, np.floating)):
                numbers[name] = value.item() if isinstance(value, (np.integer, np.floating)) else value
            else:
                raise InputError(f"cannot save {type(self).__name__}.{name} ({type(value).__name__}) without "
                                 "pickle; leave this probe out of a runner you save")
        meta["attributes"] = numbers
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: dict[str, torch.Tensor], meta: dict[str, Any], device: Any = None) -> Any:
        """The fitted estimator rebuilt from :meth:`to_state` output."""
        est = cls(**meta.get("params", {}))
        est.classes_ = arrays["classes"].numpy()
        for name, value in meta.get("attributes", {}).items():
            if isinstance(value, dict) and "list_of_arrays" in value:
                setattr(est, name, [arrays[f"list.{name}.{i}"].numpy() for i in range(value["list_of_arrays"])])
            else:
                setattr(est, name, value)
        for key, tensor in arrays.items():
            if key.startswith("attr."):
                setattr(est, key[5:], tensor.numpy())
        return est

    def resident_bytes(self) -> int:
        """Bytes of the fitted arrays."""
        return sum(int(v.nbytes) for v in vars(self).values() if isinstance(v, np.ndarray))


class LinearDiscriminantAnalysis(_Fitted, discriminant_analysis.LinearDiscriminantAnalysis):
    """scikit-learn's ``LinearDiscriminantAnalysis``."""


class QuadraticDiscriminantAnalysis(_Fitted, discriminant_analysis.QuadraticDiscriminantAnalysis):
    """scikit-learn's ``QuadraticDiscriminantAnalysis``."""
