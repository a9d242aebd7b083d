"""Baseline probes beside MASC: nearest class mean, a softmax-regression probe and VeLPIC."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from masc_probe.errors import InputError
from masc_probe.probes._base import StatisticProbe, cosine_to_rows, integer_classes, json_params
from masc_probe.probes._eigen import decompose
from masc_probe.probes._linalg import gram
from masc_probe.probes._threads import limited_threads, probe_threads, threads_for
from masc_probe.probes._inputs import (
    _check_min_classes,
    _check_X,
    _check_Xy,
    _is_tensor,
    _labels_output,
    _output,
    _resolve_device,
)

__all__ = ["LinearProbe", "NearestClassMean", "VeLPIC"]


class NearestClassMean(StatisticProbe):
    """Nearest class mean by cosine similarity: predict argmax_c cos(x, μ_c).

    Sufficient statistics are Σx and n_c per class, so ``partial_fit`` streams and ``merge`` adds shards exactly.
    A zero vector (or a zero class mean) has cosine 0.

    Args:
        device: where the math runs; None: where the first training batch lives.

    Attributes:
        classes_: (n_classes,) labels.
        centroids_: (n_classes, n_features) float32 class means.
        n_features_in_: d.

    Example:
        >>> import numpy as np
        >>> ncm = NearestClassMean().fit(np.eye(4), [0, 0, 1, 1])
        >>> ncm.predict(np.array([[1.0, 0.5, 0.0, 0.0]]))
        array([0])
    """

    _second_moment = False

    def __init__(self, *, device: str | torch.device | None = None) -> None:
        self.device = device

    @property
    def centroids_(self) -> np.ndarray:
        """(n_classes, n_features) class means."""
        return self._solved().cpu().numpy()

    def _solve(self) -> torch.Tensor:
        stats = self._stats
        entries = [stats.entries[label] for label in stats.classes.tolist()]
        means = [e.sum / e.count if e.count else e.sum for e in entries]
        return torch.stack(means).float()

    def _scores(self, X: torch.Tensor, solution: torch.Tensor) -> torch.Tensor:
        return cosine_to_rows(X, solution.to(X.device))


class VeLPIC(StatisticProbe):
    """VeLPIC (arXiv 2603.19865): one vector per class, the top eigenvector of the uncentered scatter S_c.

    Each v_c is signed so that the mean of x·v_c over ALL training points is >= 0 (Σx over every point is kept, so
    streaming and merging stay exact). ``predict`` takes argmax_c x·v_c. Writing ``coef_`` into a network's final
    ``nn.Linear`` (bias zeroed) makes the network predict as VeLPIC. Solvers as for MASC (scatter or Gram form).

    Args:
        solver: ``"auto"``, ``"scatter"`` or ``"gram"``.
        max_memory: bytes for statistics held in memory (default 4 GiB, ``probes.DEFAULT_MAX_MEMORY``).
        device: where the math runs; None: where the first training batch lives.

    Attributes:
        classes_: (n_classes,) labels.
        coef_: (n_classes, n_features) float32, the signed unit vectors v_c (a zero row for an all-zero class).
        intercept_: (n_classes,) zeros.
        n_features_in_: d.
    """

    def __init__(
        self, *, solver: str = "auto", max_memory: int | None = None, device: str | torch.device | None = None
    ) -> None:
        self.solver = solver
        self.max_memory = max_memory
        self.device = device

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        # One uncentered direction per class, signed by the mean over all points: classes lying on opposite rays
        # of one line through the origin (scikit-learn's centred toy blobs) cannot all be told apart.
        tags.classifier_tags.poor_score = True
        return tags

    @property
    def coef_(self) -> np.ndarray:
        """(n_classes, n_features) the signed top eigenvectors v_c."""
        return self._solved().cpu().numpy()

    @property
    def intercept_(self) -> np.ndarray:
        """(n_classes,) zeros: VeLPIC has no bias."""
        return np.zeros(len(self._solved()), dtype=np.float32)

    def _solve(self) -> torch.Tensor:
        stats = self._stats
        total = sum(e.sum for e in stats.entries.values())
        vectors = []
        for label in stats.classes.tolist():
            entry = stats.entries[label]
            v = torch.zeros(stats.d, dtype=torch.float32, device=stats.device)
            if entry.count:
                if entry.scatter is not None:
                    eigen = decompose(entry.scatter.float(), overwrite=True)
                    if eigen.rank:
                        v = eigen.vectors(1)[:, 0].to(stats.device)
                else:
                    rows = stats.rows(label)
                    eigen = decompose(gram(rows), overwrite=True)
                    if eigen.rank:
                        u = eigen.vectors(1).to(rows.device)
                        v = (rows.T @ u)[:, 0].to(stats.device) / float(np.sqrt(eigen.values[0]))
                        v = v / torch.linalg.vector_norm(v)
            if float(total.to(v.device) @ v.double()) < 0:
                v = -v
            vectors.append(v)
        return torch.stack(vectors)

    def _scores(self, X: torch.Tensor, solution: torch.Tensor) -> torch.Tensor:
        return X @ solution.to(X.device).T


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Softmax regression, one ``nn.Linear`` trained with Adam, configured by default as in the MASC paper.

    Args:
        lr: Adam learning rate (paper: 1e-3).
        epochs: passes over the data (paper: 20).
        batch_size: rows per step (paper: 128).
        random_state: seed (int), a ``RandomState``, or None; fixes initialization and shuffling.
        device: where training runs; None: the input's device (CPU for numpy).

    Attributes:
        classes_: (n_classes,) labels.
        coef_: (n_classes, n_features) float32 weights; intercept_: (n_classes,) biases.
        n_features_in_: d.
    """

    def __init__(
        self,
        *,
        lr: float = 1e-3,
        epochs: int = 20,
        batch_size: int = 128,
        random_state: int | np.random.RandomState | None = 0,
        device: str | torch.device | None = None,
    ) -> None:
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.random_state = random_state
        self.device = device

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        # The paper's configuration (Adam 1e-3, 20 epochs, batch 128) underfits tiny problems: it scored 0.30-0.61
        # on scikit-learn's toy blobs (300 rows, ~3 steps an epoch), below the 0.83 that check requires.
        tags.classifier_tags.poor_score = True
        return tags

    def fit(self, X: Any, y: Any) -> LinearProbe:
        """Train on (n_samples, n_features) X (array or tensor) and (n_samples,) labels y; returns self."""
        for name, value, low in (("lr", self.lr, 0.0), ("epochs", self.epochs, 0), ("batch_size", self.batch_size, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > low:
                raise InputError(f"{name} must be a number > {low:g}; got {value!r}")
        device = _resolve_device(self.device, X)
        Xt, yv = _check_Xy(self, X, y, reset=True, device=device)
        self.classes_, targets = np.unique(yv, return_inverse=True)
        _check_min_classes(self, self.classes_)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        generator = torch.Generator().manual_seed(seed)
        n, d = Xt.shape
        layer = torch.nn.Linear(d, len(self.classes_), device=device)
        bound = 1.0 / np.sqrt(d)  # nn.Linear's own initialization, drawn from the seeded generator
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=generator))
        optimizer = torch.optim.Adam(layer.parameters(), lr=float(self.lr))
        yt = torch.from_numpy(targets).to(device)
        # Batch-128 steps are latency-bound: on CPU they run on one thread by default (see probes._threads).
        threads = probe_threads() if device.type == "cpu" else None
        with torch.enable_grad(), limited_threads(threads):
            for _ in range(int(self.epochs)):
                order = torch.randperm(n, generator=generator).to(device)
                for start in range(0, n, int(self.batch_size)):
                    idx = order[start : start + int(self.batch_size)]
                    loss = torch.nn.functional.cross_entropy(layer(Xt[idx]), yt[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        self._layer = layer.requires_grad_(False).eval()
        return self

    @property
    def coef_(self) -> np.ndarray:
        check_is_fitted(self)
        return self._layer.weight.detach().cpu().numpy().copy()

    @property
    def intercept_(self) -> np.ndarray:
        check_is_fitted(self)
        return self._layer.bias.detach().cpu().numpy().copy()

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "_layer")

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The weights, bias and classes, and JSON metadata, that rebuild this probe exactly (:meth:`from_state`).

        Raises:
            InputError: If the probe is not fitted, or its labels are not integers.
        """
        check_is_fitted(self)
        params = {k: v for k, v in self.get_params().items() if k != "device"}
        arrays = {"classes": torch.from_numpy(integer_classes(self.classes_)),
                  "weight": self._layer.weight.detach().cpu().contiguous(),
                  "bias": self._layer.bias.detach().cpu().contiguous()}
        meta = {"class": type(self).__name__, "n_features": int(self.n_features_in_),
                "params": json_params(params, type(self).__name__)}
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: dict[str, torch.Tensor], meta: dict[str, Any], device: torch.device) -> LinearProbe:
        """A fitted probe rebuilt from :meth:`to_state` output, on *device*."""
        est = cls(**meta.get("params", {}), device=device)
        weight = arrays["weight"]
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], device=device)
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(arrays["bias"])
        est._layer = layer.requires_grad_(False).eval()
        est.classes_, est.n_features_in_ = arrays["classes"].numpy(), int(weight.shape[1])
        return est

    def resident_bytes(self) -> int:
        """Bytes of the fitted weights (0 before fitting)."""
        layer = self.__dict__.get("_layer")
        return 0 if layer is None else sum(int(q.numel()) * q.element_size() for q in layer.parameters())

    def _logits(self, X: Any) -> torch.Tensor:
        check_is_fitted(self)
        device = _resolve_device(self.device, X, self._layer.weight.device)
        with limited_threads(threads_for(X)), torch.no_grad():
            Xt = _check_X(self, X, reset=False, device=device)
            return self._layer.to(device)(Xt)

    def decision_function(self, X: Any) -> Any:
        """Logits (n_samples, n_classes), or (n_samples,) = logit of classes_[1] minus classes_[0] for two classes."""
        logits = self._logits(X)
        return _output(logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits, X)

    def predict_proba(self, X: Any) -> Any:
        """Softmax probabilities, (n_samples, n_classes), the same kind as X."""
        return _output(torch.softmax(self._logits(X), dim=1), X)

    def predict(self, X: Any) -> Any:
        """The most probable class per row; a tensor on X's device for tensor input with numeric labels."""
        return _labels_output(torch.argmax(self._logits(X), dim=1), self.classes_, X)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy of ``predict(X)`` against y (numpy or tensor)."""
        from sklearn.metrics import accuracy_score

        pred = self.predict(X)
        pred = pred.cpu().numpy() if _is_tensor(pred) else pred
        y = y.detach().cpu().numpy() if _is_tensor(y) else y
        return float(accuracy_score(y, pred, sample_weight=sample_weight))
