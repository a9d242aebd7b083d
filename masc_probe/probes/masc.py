"""The Minimum Angle Subspace Classifier (Ketha & Ramaswamy, arXiv 2501.14687), exact and fast."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from masc_probe.errors import InputError
from masc_probe.probes._base import StatisticProbe, row_blocks
from masc_probe.probes._eigen import Eigen, decompose
from masc_probe.probes._inputs import _output
from masc_probe.probes._linalg import gram, matmul
from masc_probe.probes._params import check_n_components

__all__ = ["MinimumAngleSubspaceClassifier"]


class _Subspace:
    """One class's eigendecomposition and the orthonormal basis rows built from it, prefix by prefix."""

    def __init__(self, eigen: Eigen | None, trace: float, rows: torch.Tensor | None, d: int, device: torch.device):
        self.eigen, self.trace, self._rows = eigen, trace, rows
        self._basis = torch.zeros(d, 0, dtype=torch.float32, device=device)  # columns = basis vectors

    def k_for(self, n_components: float | int) -> int:
        """k_c: #{i : r_i <= t} + 1 for a fraction t (r_i cumulative eigenvalue ratios), or the count; <= rank."""
        if self.eigen is None or self.eigen.rank == 0 or self.trace <= 0:
            return 0
        if isinstance(n_components, int):
            return min(n_components, self.eigen.rank)
        ratios = np.cumsum(self.eigen.values) / self.trace
        return min(int(np.count_nonzero(ratios <= n_components)) + 1, self.eigen.rank)

    def basis(self, k: int) -> torch.Tensor:
        """The top-k basis vectors as columns, (d, k) float32; a larger k extends the cached prefix."""
        have = self._basis.shape[1]
        if k > have and self.eigen is not None:
            vectors = self.eigen.vectors(k)[:, have:k].to(self._basis.device)
            if self._rows is not None:
                # Gram form: the right singular vectors X_cᵀ u_i / sqrt(λ_i) from the left ones.
                scale = torch.from_numpy(self.eigen.values[have:k]).to(vectors.device).rsqrt().float()
                vectors = matmul(self._rows.T, vectors.to(self._rows.device)).to(vectors.device) * scale
            self._basis = torch.cat([self._basis, vectors], dim=1) if have else vectors
        return self._basis[:, :k]


class _Solution:
    """Every class's subspace, and the stacked basis matrix for the fitted ``n_components``."""

    def __init__(self, subspaces: list[_Subspace], n_components: float | int, solvers: list[str]) -> None:
        self.subspaces, self.solvers = subspaces, solvers
        self.ks = np.array([s.k_for(n_components) for s in subspaces], dtype=np.int64)
        self.stacked = self.stack(self.ks)

    def stack(self, ks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """All class bases side by side (d, Σk) and the class index of each column (Σk,)."""
        bases = [s.basis(int(k)) for s, k in zip(self.subspaces, ks, strict=True)]
        W = torch.cat(bases, dim=1)
        segment = torch.repeat_interleave(torch.arange(len(ks), device=W.device), torch.from_numpy(ks).to(W.device))
        return W, segment


class _FrozenSubspace:
    """Stands in for a class's :class:`_Subspace` in a frozen MASC: the fitted basis only (a view into the stack)."""

    def __init__(self, basis: torch.Tensor) -> None:
        self._basis = basis

    def basis(self, k: int) -> torch.Tensor:
        return self._basis[:, :k]

    def k_for(self, n_components: float | int) -> int:
        raise InputError("a frozen (runner-fitted or loaded) MASC keeps only its fitted components; "
                         f"fit a MinimumAngleSubspaceClassifier to score n_components={n_components!r}")


class _FrozenSolution:
    """What scoring reads, and nothing else: the stacked (d, Σk) basis, the column-to-class map, views and k_c."""

    def __init__(self, stacked: torch.Tensor, ks: list[int], solvers: list[str]) -> None:
        self.ks = np.asarray(ks, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(self.ks)])
        self.subspaces = [_FrozenSubspace(stacked[:, a:b]) for a, b in zip(starts[:-1], starts[1:])]
        self.solvers = solvers
        segment = torch.repeat_interleave(torch.arange(len(ks), device=stacked.device),
                                          torch.from_numpy(self.ks).to(stacked.device))
        self.stacked = (stacked, segment)  # the same (d, Σk) layout _Solution scores with

    def stack(self, ks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        raise InputError("a frozen MASC scores only its fitted n_components")


class MinimumAngleSubspaceClassifier(StatisticProbe):
    """Minimum Angle Subspace Classifier: the class whose linear subspace makes the smallest angle with x.

    For every class c, the subspace is spanned by the top k_c eigenvectors of the *uncentered* scatter
    S_c = X_cᵀX_c (a subspace through the origin). ``n_components`` follows scikit-learn's PCA: a float t in (0, 1)
    picks per class k_c = #{i : r_i <= t} + 1 with r_i the cumulative eigenvalue ratios of S_c; an int is a count
    (clipped to the rank). cos θ_c(x) = ‖B_c x‖ / ‖x‖ with B_c the orthonormal basis; ``predict`` takes the
    largest, ties going to the lowest class index. A zero vector has cos = 0 for every class (never NaN).

    Two exact solvers: ``"scatter"`` accumulates S_c (d × d, float64) and ``"gram"`` keeps the class rows (written
    to a temporary folder beyond ``max_memory``, deleted by ``close()`` or with the probe) and decomposes
    G_c = X_c X_cᵀ (n_c × n_c), which has the same nonzero eigenvalues. ``"auto"`` decides per class, the same way
    in ``fit`` and in streaming ``partial_fit`` (where n is unknown ahead): rows while n_c <= d, then a scatter if
    one more fits ``max_memory`` (16 d² bytes), else rows. Products are float32 with float64 accumulation across
    batches; the eigendecomposition is float32, computed once per class and kept (two m × m factors, m the
    matrix size), so ``cosines(X, n_components=...)`` scores any other threshold without refitting. Eigenvalues
    below 64 float32 epsilons of the largest count as zero: the rank ends there. The statistics that add exactly
    across processes come from ``additive_statistics()`` (see there); ``merge`` adds another probe's.

    Threads: the eigendecompositions, and whole calls on small inputs (under 2^24 elements), run on one thread;
    ``MASC_PROBE_THREADS`` overrides it (0 leaves the libraries' settings). On small shared machines multi-threaded
    LAPACK ``eigh`` ran 20-50x slower whenever another process was busy. Large products use the process's setting.

    Args:
        n_components: float in (0, 1), variance fraction (default 0.99), or int >= 1, components per class.
        solver: ``"auto"``, ``"scatter"`` or ``"gram"``.
        max_memory: bytes for statistics held in memory (default 4 GiB, ``probes.DEFAULT_MAX_MEMORY``).
        device: where the math runs (``"cpu"``, ``"cuda"``, ...); None: where the first training batch lives.

    Attributes:
        classes_: (n_classes,) labels.
        n_components_: (n_classes,) int, k_c per class.
        components_: list of (k_c, n_features) float32 arrays, orthonormal rows.
        solver_: ``"scatter"``, ``"gram"`` or ``"mixed"``, the form the statistics took.
        n_features_in_: d.

    Example:
        >>> import numpy as np
        >>> X = np.abs(np.random.default_rng(0).normal(size=(100, 8))); y = np.arange(100) % 2
        >>> masc = MinimumAngleSubspaceClassifier(0.9).fit(X, y)
        >>> masc.predict(X[:3]).shape, masc.cosines(X[:3], n_components=2).shape
        ((3,), (3, 2))
    """

    _first_moment = False  # the subspaces need only the second moment

    def __init__(
        self,
        n_components: float | int = 0.99,
        *,
        solver: str = "auto",
        max_memory: int | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.n_components = n_components
        self.solver = solver
        self.max_memory = max_memory
        self.device = device

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        # The angle ignores sign: classes on opposite rays of one line (scikit-learn's centred toy blobs) get the
        # same subspace, so MASC cannot separate them. Real post-ReLU activations are non-negative.
        tags.classifier_tags.poor_score = True
        return tags

    def _check_params(self) -> None:
        super()._check_params()
        check_n_components(self.n_components)

    @property
    def n_components_(self) -> np.ndarray:
        """(n_classes,) components per class for ``n_components``."""
        return self._solved().ks.copy()

    @property
    def components_(self) -> list[np.ndarray]:
        """Per class, the (k_c, n_features) orthonormal basis rows."""
        solution = self._solved()
        return [s.basis(int(k)).T.cpu().numpy() for s, k in zip(solution.subspaces, solution.ks, strict=True)]

    @property
    def solver_(self) -> str:
        """The form the statistics took: ``"scatter"``, ``"gram"`` or ``"mixed"`` (per class)."""
        kinds = set(self._solved().solvers)
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def cosines(self, X: Any, n_components: float | int | None = None) -> Any:
        """cos θ_c(x) for every sample and class, optionally for another ``n_components`` (no refit).

        Args:
            X: (n_samples, n_features) array or tensor.
            n_components: a threshold or count other than the fitted one; None uses ``self.n_components``.

        Returns:
            (n_samples, n_classes) float32 in [0, 1], the same kind as X.
        """
        nc = None if n_components is None else check_n_components(n_components)
        return _output(self._scores_checked(X, n_components=nc), X)

    def _state_arrays(self, solution: Any, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        comps = self.components_
        meta.update(ks=[int(c.shape[0]) for c in comps], solvers=list(solution.solvers))
        return {"components": torch.from_numpy(np.concatenate(comps, axis=0)) if comps else torch.zeros(0, 0)}

    def _solution_from_state(self, arrays: dict[str, torch.Tensor], meta: dict[str, Any],
                             device: torch.device) -> _FrozenSolution:
        rows = arrays["components"]
        if rows.numel() == 0:
            rows = torch.zeros(0, int(meta["n_features"]))
        # One (d, Σk) copy, contiguous as the stacked basis of a fitted MASC, and nothing else kept.
        return _FrozenSolution(rows.to(device).T.contiguous(), meta["ks"], meta["solvers"])

    def _frozen_solution(self, solution: Any, device: torch.device) -> _FrozenSolution:
        return _FrozenSolution(solution.stacked[0].to(device), [int(k) for k in solution.ks], list(solution.solvers))

    def _solution_bytes(self, solution: Any) -> int:
        return int(solution.stacked[0].numel()) * 4

    def _solve(self) -> _Solution:
        stats = self._stats
        subspaces, solvers = [], []
        for label in stats.classes.tolist():
            entry = stats.entries[label]
            rows = None
            if entry.scatter is not None:
                matrix = entry.scatter.float()
                solvers.append("scatter")
            else:
                rows = stats.rows(label)
                matrix = gram(rows)
                solvers.append("gram")
            # The total variance Σλ is the trace, Σ‖x‖² over the class: no need for the whole spectrum's sum.
            exact = entry.scatter if entry.scatter is not None else matrix
            trace = float(torch.diagonal(exact).sum(dtype=torch.float64))
            eigen = decompose(matrix, overwrite=True) if entry.count else None
            subspaces.append(_Subspace(eigen, trace, rows, stats.d, stats.device))
        return _Solution(subspaces, check_n_components(self.n_components), solvers)

    def _scores(self, X: torch.Tensor, solution: _Solution, n_components: float | int | None = None) -> torch.Tensor:
        if n_components is None:
            W, segment = solution.stacked
        else:
            W, segment = solution.stack(np.array([s.k_for(n_components) for s in solution.subspaces]))
        n_classes = len(solution.subspaces)
        out = torch.empty(X.shape[0], n_classes, dtype=torch.float32, device=X.device)
        W = W.to(X.device)
        segment = segment.to(X.device)
        blocks = row_blocks(X.shape[0], W.shape[1])
        for start in blocks:
            block = X[start : start + blocks.step]
            projected = matmul(block, W)
            sq = torch.zeros(block.shape[0], n_classes, dtype=torch.float32, device=X.device)
            sq.index_add_(1, segment, projected.square_())
            norm2 = torch.sum(block * block, dim=1, keepdim=True)
            # cos² = ‖Bx‖²/‖x‖²; a zero vector has no angle and scores 0 everywhere.
            cos2 = torch.where(norm2 > 0, sq / torch.where(norm2 > 0, norm2, torch.ones_like(norm2)), 0.0)
            out[start : start + block.shape[0]] = cos2.clamp_(0.0, 1.0).sqrt_()
        return out
