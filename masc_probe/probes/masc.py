"""The Minimum Angle Subspace Classifier (Ketha & Ramaswamy, arXiv 2501.14687), exact and fast."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from masc_probe._params import check_n_components
from masc_probe.errors import InputError
from masc_probe.probes._base import StatisticProbe, add_column_runs, column_runs, row_blocks
from masc_probe.probes._eigen import Eigen, decompose
from masc_probe.probes._inputs import _check_X, _output, _resolve_device
from masc_probe.probes._linalg import gram, matmul
from masc_probe.probes._profile import _Profile
from masc_probe.probes._threads import limited_threads, threads_for

__all__ = ["PROFILE_SIZES", "MinimumAngleSubspaceClassifier"]

# The subspace sizes a profile scores from one fit: variance fractions, then counts per class (clipped to the rank).
PROFILE_SIZES: tuple[float | int, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1, 2, 5, 10, 20, 50, 100)
# Bytes of a profile's Σ k_max_c basis vectors (4 d each, counted whole though it reads the fitted stack's share
# from the stack): sizes whose vectors do not fit are left out (recorded).
PROFILE_MAX_BYTES = 256 * 1024**2


class _Subspace:
    """One class's eigendecomposition and the orthonormal basis rows built from it, prefix by prefix."""

    def __init__(self, eigen: Eigen | None, trace: float, rows: torch.Tensor | None, d: int, device: torch.device):
        self.eigen, self.trace, self._rows, self.d = eigen, trace, rows, d
        self._basis = torch.zeros(d, 0, dtype=torch.float32, device=device)  # columns = basis vectors
        self._complement: tuple[int, torch.Tensor] | None = None

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
                # Gram form: the right singular vectors X_cᵀ u_i / sqrt(λ_i) from the left ones (the scale is
                # applied to the n_c x k factor, the smaller one).
                vectors = matmul(self._rows.T, self._scaled(vectors, have, k)).to(self._basis.device)
            self._basis = torch.cat([self._basis, vectors], dim=1) if have else vectors
        return self._basis[:, :k]

    def _scaled(self, vectors: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Gram-form eigenvectors lo .. hi - 1 (columns) divided by sqrt(λ_i), on the rows' device."""
        assert self.eigen is not None and self._rows is not None
        scale = torch.from_numpy(self.eigen.values[lo:hi]).to(self._rows.device).rsqrt().float()
        return vectors.to(self._rows.device) * scale

    def basis_rows(self, lo: int, hi: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Basis vectors lo .. hi - 1 as rows, (hi - lo, d) float32, computed without extending the cached prefix
        (a profile's vectors beyond the fitted ones; the Gram form's u_iᵀ X_c / sqrt(λ_i) comes out as rows);
        written into *out* (C-contiguous, (hi - lo, d)) where given."""
        if hi <= lo or self.eigen is None:
            return torch.zeros(0, self.d, dtype=torch.float32, device=self._basis.device) if out is None else out
        if hi <= self._basis.shape[1]:
            part = self._basis[:, lo:hi].T
        elif self._rows is None:
            part = self.eigen.vectors(hi)[:, lo:hi].T.to(self._basis.device)
        else:
            scaled = self._scaled(self.eigen.vectors(hi)[:, lo:hi], lo, hi).T
            if out is not None and out.device == self._rows.device:
                return matmul(scaled, self._rows, out=out)
            part = matmul(scaled, self._rows).to(self._basis.device)
        return part.contiguous() if out is None else out.copy_(part)

    def columns(self, k: int, complement: bool) -> int:
        """The number of scoring columns at size k: d - k for the complement, else the top k (at most the rank)."""
        if complement:
            return self.d - k
        return 0 if self.eigen is None else min(k, self.eigen.rank)

    def write_rows(self, k: int, complement: bool, out: torch.Tensor) -> None:
        """Write the scoring columns at size k (the top-k basis, or the complement) as rows into *out* ((columns,
        d), C-contiguous: a block of a stack) and keep the top-k basis as a view of it instead of a copy of its
        own. The Gram form's basis is computed there directly (u_iᵀ X_c / sqrt(λ_i) comes out as rows)."""
        if complement:
            out.copy_(self.complement(k).T)
            return
        if not out.shape[0]:
            return
        if self._basis.shape[1] > k:
            out.copy_(self._basis[:, :k].T)
            return
        if self._basis.shape[1] == 0 and self._rows is not None:
            self.basis_rows(0, k, out=out)
        else:
            out.copy_(self.basis(k).T)
        self._basis = out.T

    def scores_from_complement(self, k: int) -> bool:
        """Whether ‖B_c x‖² is cheaper as ‖x‖² − ‖B_c^⊥ x‖²: the scatter form (its eigenvectors span all d
        dimensions, the null space included) with more than half of them in the basis."""
        return self._rows is None and self.eigen is not None and 2 * k > self.d

    def complement(self, k: int) -> torch.Tensor:
        """The d - k basis vectors of the orthogonal complement of the top-k basis, (d, d - k) float32."""
        if self._complement is None or self._complement[0] != k:
            assert self.eigen is not None  # scores_from_complement(k) holds
            self._complement = (k, self.eigen.complement(k).to(self._basis.device))
        return self._complement[1]


def _segments(counts: np.ndarray, device: torch.device) -> torch.Tensor:
    """The class index of each column of a stack whose class c has counts[c] columns."""
    return torch.repeat_interleave(torch.arange(len(counts), device=device),
                                   torch.from_numpy(np.asarray(counts, dtype=np.int64)).to(device))


class _Solution:
    """Every class's subspace, and the stacked scoring matrix for the fitted ``n_components``."""

    def __init__(self, subspaces: list[_Subspace], n_components: float | int, solvers: list[str]) -> None:
        self.subspaces, self.solvers = subspaces, solvers
        self.ks = np.array([s.k_for(n_components) for s in subspaces], dtype=np.int64)
        self.stacked = self.stack(self.ks)

    def stack(self, ks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What scoring reads: every class's columns side by side (d, Σ columns), the class of each column, and
        which classes are scored from the complement (C,) bool. A class's columns are its top-k_c basis, or the
        d - k_c vectors of its complement when those are fewer (see ``_Subspace.scores_from_complement``)."""
        flip = [s.scores_from_complement(int(k)) for s, k in zip(self.subspaces, ks, strict=True)]
        counts = np.array([s.columns(int(k), f) for s, k, f in zip(self.subspaces, ks, flip, strict=True)],
                          dtype=np.int64)
        d = self.subspaces[0].d if self.subspaces else 0
        device = self.subspaces[0]._basis.device if self.subspaces else torch.device("cpu")
        # Built as rows (Σ columns, d), each class's block written where it lies, and read through its transpose:
        # BLAS takes a transposed operand at the same speed, and no (d, k_c) part is made only to be copied.
        rows = torch.empty(int(counts.sum()), d, dtype=torch.float32, device=device)
        start = 0
        for s, k, f, n in zip(self.subspaces, ks, flip, counts.tolist(), strict=True):
            s.write_rows(int(k), f, rows[start : start + n])
            start += n
        W = rows.T
        return W, _segments(counts, W.device), torch.tensor(flip, dtype=torch.bool, device=W.device)


class _FrozenSubspace:
    """Stands in for a class's :class:`_Subspace` in a frozen MASC: the fitted columns only (a view into the stack)."""

    def __init__(self, columns: torch.Tensor, complement: bool) -> None:
        self._columns, self._complement = columns, complement

    def basis(self, k: int) -> torch.Tensor:
        if self._complement:
            raise InputError("this frozen MASC scores the class from the orthogonal complement of its subspace and "
                             "keeps only that; fit a MinimumAngleSubspaceClassifier for its components_")
        return self._columns[:, :k]

    def k_for(self, n_components: float | int) -> int:
        raise InputError("a frozen (runner-fitted or loaded) MASC keeps only its fitted components; "
                         f"fit a MinimumAngleSubspaceClassifier to score n_components={n_components!r}")


class _FrozenSolution:
    """What scoring reads, and nothing else: the stacked (d, Σ columns) matrix, the column-to-class map, which
    classes are scored from the complement, per-class views and k_c."""

    def __init__(self, stacked: torch.Tensor, ks: list[int], solvers: list[str],
                 complement: list[bool] | None = None) -> None:
        self.ks = np.asarray(ks, dtype=np.int64)
        flip = [bool(f) for f in complement] if complement is not None else [False] * len(ks)
        d = stacked.shape[0]
        counts = np.array([d - k if f else k for k, f in zip(self.ks.tolist(), flip, strict=True)], dtype=np.int64)
        if int(counts.sum()) != stacked.shape[1]:
            raise InputError(f"a MASC of {len(ks)} classes with k_c {self.ks.tolist()} needs {int(counts.sum())} "
                             f"stacked columns, got {stacked.shape[1]}")
        starts = np.concatenate([[0], np.cumsum(counts)])
        self.subspaces = [_FrozenSubspace(stacked[:, a:b], f) for a, b, f in zip(starts[:-1], starts[1:], flip)]
        self.solvers = solvers
        self.stacked = (stacked, _segments(counts, stacked.device),
                        torch.tensor(flip, dtype=torch.bool, device=stacked.device))
        self.profile: _Profile | None = None  # kept by frozen(profile=...): every size of a profile, one projection

    def stack(self, ks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
    below 64 float32 epsilons of the largest count as zero: the rank ends there. A scatter-form class with
    k_c > d/2 is scored from the orthogonal complement of its subspace, cos² = 1 − ‖B_c^⊥x‖²/‖x‖² (exact: the
    eigenvectors span R^d), which has d − k_c < k_c columns to project on. The statistics that add exactly
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

    def frozen(self, device: str | torch.device | None = None, *,
               profile: tuple[float | int, ...] | None = None,
               profile_max_bytes: int = PROFILE_MAX_BYTES) -> MinimumAngleSubspaceClassifier:
        """The compact predicting form (see ``StatisticProbe.frozen``); with *profile* (subspace sizes, e.g.
        :data:`PROFILE_SIZES`) it also keeps each class's basis up to the largest of them, so that
        :meth:`predict_profile` scores every size from one projection. Sizes whose columns would exceed
        *profile_max_bytes* are left out (``profile_dropped_``); the fitted ``n_components`` never is."""
        shell = super().frozen(device)
        if profile is not None:
            sizes = tuple(check_n_components(s) for s in profile)
            solution = self._solved()
            shell._solution.profile = _Profile.build(solution.subspaces, shell._solution.stacked, solution.ks, sizes,
                                                     self.n_components, max_bytes=profile_max_bytes,
                                                     device=shell._solution.stacked[0].device)
        return shell

    @property
    def profile_sizes_(self) -> list[float | int]:
        """The subspace sizes :meth:`predict_profile` scores (a frozen MASC's kept profile; empty without one)."""
        profile = getattr(self._solved(), "profile", None)
        return [] if profile is None else list(profile.sizes)

    @property
    def profile_dropped_(self) -> list[float | int]:
        """Sizes of the requested profile left out for memory."""
        profile = getattr(self._solved(), "profile", None)
        return [] if profile is None else list(profile.dropped)

    def profile_components_(self) -> np.ndarray:
        """(n_sizes, n_classes) k_c at each of :attr:`profile_sizes_`."""
        profile = getattr(self._solved(), "profile", None)
        return np.zeros((0, len(self.classes_)), np.int64) if profile is None else profile.ks.copy()

    def predict_profile(self, X: Any, sizes: tuple[float | int, ...] | None = None) -> Any:
        """Predicted labels at every subspace size, from one projection: (n_sizes, n_samples).

        Args:
            X: (n_samples, n_features) array or tensor.
            sizes: Sizes to score (fractions and counts, as ``n_components``); None: the frozen probe's kept
                profile (:attr:`profile_sizes_`). A fitted (not frozen) MASC scores any sizes.

        Returns:
            (len(sizes), n_samples) labels, the same kind as X.
        """
        solution = self._solved()
        if sizes is None:
            profile = getattr(solution, "profile", None)
            if profile is None:
                raise InputError("this MASC keeps no profile: pass sizes=..., or freeze it with profile=...")
        else:
            sizes = tuple(check_n_components(s) for s in sizes)
            profile = getattr(solution, "profile", None)
            if profile is None or list(sizes) != profile.sizes:
                if isinstance(solution, _FrozenSolution):
                    raise InputError(f"a frozen MASC scores only its kept profile {self.profile_sizes_}, got "
                                     f"sizes {list(sizes)}")
                profile = _Profile.build(solution.subspaces, solution.stacked, solution.ks, sizes, self.n_components,
                                         max_bytes=1 << 62, device=solution.stacked[0].device)
        with limited_threads(threads_for(X)):
            Xt = _check_X(self, X, reset=False, device=_resolve_device(self.device, X, self._stats.device))
            idx = profile.predict(Xt)
        labels = np.asarray(self.classes_)[idx.numpy()]
        if isinstance(X, torch.Tensor) and labels.dtype.kind in "biu":
            return torch.as_tensor(labels, device=X.device)
        return labels

    def _state_arrays(self, solution: Any, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        W, _, flip = solution.stacked
        # The scoring columns as rows: per class its basis, or its complement where meta["complement"] says so.
        meta.update(ks=[int(k) for k in solution.ks], solvers=list(solution.solvers),
                    complement=[bool(f) for f in flip.tolist()])
        arrays = {"components": W.T.detach().cpu()}
        profile = getattr(solution, "profile", None)
        if profile is not None:
            # profile_basis: the vectors the stack does not hold, as rows; each class's first shared_c are the
            # stack's (files without "shared" hold every vector there).
            meta["profile"] = {"sizes": profile.sizes, "ks": profile.ks.tolist(), "kmax": profile.kmax.tolist(),
                               "dropped": profile.dropped, "shared": profile.shared.tolist()}
            arrays["profile_basis"] = profile.rows.detach().cpu()
        return arrays

    def _solution_from_state(self, arrays: dict[str, torch.Tensor], meta: dict[str, Any],
                             device: torch.device) -> _FrozenSolution:
        rows = arrays["components"]
        if rows.numel() == 0:
            rows = torch.zeros(0, int(meta["n_features"]))
        # One copy, the file's (Σ columns, d) rows, scored through its transpose: BLAS reads a transposed operand
        # as fast (1,000 x 4,096 by 4,096 x 7,867 on one thread: the same time either way), and a transposing copy
        # took as long as that product. Files written before complements existed have no "complement" entry: every
        # class there is its basis.
        solution = _FrozenSolution(rows.to(device).T, meta["ks"], meta["solvers"], meta.get("complement"))
        if "profile" in meta:
            info = meta["profile"]
            ks = np.asarray(info["ks"], dtype=np.int64).reshape(len(info["sizes"]), len(meta["ks"]))
            stack, _, flip = solution.stacked
            d = stack.shape[0]
            counts = np.where(flip.cpu().numpy(), d - solution.ks, solution.ks)
            shared = np.asarray(info.get("shared", [0] * len(meta["ks"])), np.int64)
            solution.profile = _Profile((stack, counts), shared, arrays["profile_basis"].to(device).contiguous(),
                                        np.asarray(info["kmax"], np.int64), list(info["sizes"]), ks,
                                        list(info.get("dropped", [])))
        return solution

    def _frozen_solution(self, solution: Any, device: torch.device) -> _FrozenSolution:
        W, _, flip = solution.stacked
        return _FrozenSolution(W.to(device), [int(k) for k in solution.ks], list(solution.solvers),
                               [bool(f) for f in flip.tolist()])

    def _solution_bytes(self, solution: Any) -> int:
        profile = getattr(solution, "profile", None)
        return int(solution.stacked[0].numel()) * 4 + (0 if profile is None else profile.nbytes())

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
            W, segment, flip = solution.stacked
        else:
            W, segment, flip = solution.stack(np.array([s.k_for(n_components) for s in solution.subspaces]))
        n_classes = len(solution.subspaces)
        out = torch.empty(X.shape[0], n_classes, dtype=torch.float32, device=X.device)
        runs = column_runs(segment)  # the stack holds each class's columns side by side (read where it lives)
        W = W.to(X.device)
        flip = flip.to(X.device)
        any_flip = bool(flip.any())
        blocks = row_blocks(X.shape[0], W.shape[1])
        for start in blocks:
            block = X[start : start + blocks.step]
            projected = matmul(block, W)
            sq = torch.zeros(block.shape[0], n_classes, dtype=torch.float32, device=X.device)
            add_column_runs(sq, projected.square_(), runs)
            # One pass without an (n, d) temporary: 8x faster than sum(block * block) here, as exact in float32.
            norm2 = torch.linalg.vector_norm(block, dim=1, keepdim=True).square_()
            if any_flip:
                # Classes scored from the complement: ‖Bx‖² = ‖x‖² − ‖B^⊥x‖² (an orthonormal basis of R^d splits
                # ‖x‖² exactly); fewer columns than the basis when k_c > d/2.
                sq = torch.where(flip, norm2 - sq, sq)
            # cos² = ‖Bx‖²/‖x‖²; a zero vector has no angle and scores 0 everywhere.
            cos2 = torch.where(norm2 > 0, sq / torch.where(norm2 > 0, norm2, torch.ones_like(norm2)), 0.0)
            out[start : start + block.shape[0]] = cos2.clamp_(0.0, 1.0).sqrt_()
        return out
