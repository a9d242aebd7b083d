"""ProbeReport.aggregate: mean and spread over runs that differ only in their seed."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from masc_probe.errors import InputError

# A ProbeReport; not imported, because ProbeReport's module imports this one (ProbeReport.aggregate calls it).
ProbeReport = Any

# Keys of `corruption` that legitimately change with the seed.
_SEED_KEYS = ("seed", "realized_rate")
# Provenance that follows the data (the corrupted labels hash differently per seed) or the run itself.
_PROVENANCE_SEED_KEYS = ("seed", "data_fingerprint", "timings")
# controls and comparisons hold each run's own control numbers (one paired comparison per run does not average).
# Per-run keys that differ by seed and do not average: the profile and the selection (each run chose on its own
# images) are left out of an aggregate, as the comparisons are.
_EXTRA_SEED_KEYS = ("model_test_accuracy_by_epoch", "timings", "controls", "comparisons", "profile", "selection")


def _mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values))


def _std(values: Sequence[float]) -> float:
    return float(statistics.stdev(values)) if len(values) > 1 else 0.0


def _same(name: str, values: list[Any]) -> None:
    if any(v != values[0] for v in values[1:]):
        raise InputError(f"aggregate needs reports that differ only in seed, got different {name}: {values}")


def aggregate_reports(cls: type[ProbeReport], reports: Sequence[ProbeReport]) -> ProbeReport:
    """See :meth:`ProbeReport.aggregate`."""
    reports = list(reports)
    if len(reports) < 2:
        raise InputError(f"aggregate needs at least 2 reports, got {len(reports)}")
    if not all(isinstance(r, cls) for r in reports):
        raise InputError(f"aggregate needs ProbeReport objects, got {[type(r).__name__ for r in reports]}")
    _same("model", [r.model for r in reports])
    _same("dataset", [r.dataset for r in reports])
    _same("n_test", [r.n_test for r in reports])
    _same("corruption", [{k: v for k, v in (r.corruption or {}).items() if k not in _SEED_KEYS} for r in reports])
    keys = [[(x.get("epoch"), x["layer"], x["probe"], x["labels"], x.get("control")) for x in r.results]
            for r in reports]
    _same("result entries (epoch, layer, probe, labels, control)", [sorted(map(str, k)) for k in keys])
    _same("provenance", [{k: v for k, v in r.provenance.items() if k not in _PROVENANCE_SEED_KEYS} for r in reports])
    _same("extra keys", [{k: v for k, v in r.extra.items() if k not in _EXTRA_SEED_KEYS} for r in reports])
    seeds = [(r.corruption or {}).get("seed", r.provenance.get("seed")) for r in reports]
    known = [s for s in seeds if s is not None]
    if len(set(map(str, known))) < len(known):
        raise InputError(f"aggregate needs runs with distinct seeds, got seeds {seeds}")

    indexed = [{(x.get("epoch"), x["layer"], x["probe"], x["labels"], x.get("control")): x for x in r.results}
               for r in reports]
    results = []
    for key in keys[0]:
        group = [ix[key] for ix in indexed]
        acc = [g["test_accuracy"] for g in group]
        out: dict[str, Any] = {k: v for k, v in group[0].items()
                               if k not in ("test_accuracy", "test_ci", "train_accuracy", "train_ci", "n_components")}
        out.update(test_accuracy=_mean(acc), test_accuracy_std=_std(acc), test_accuracy_min=min(acc),
                   test_accuracy_max=max(acc), n_runs=len(group))
        sets = [set(g.get("train_accuracy", {})) for g in group]
        if sets[0] and all(s == sets[0] for s in sets):
            out["train_accuracy"] = {k: _mean([g["train_accuracy"][k] for g in group])
                                     for k in group[0]["train_accuracy"]}
            out["train_accuracy_std"] = {k: _std([g["train_accuracy"][k] for g in group])
                                         for k in group[0]["train_accuracy"]}
        comps = [g.get("n_components") for g in group]
        if all(c is not None for c in comps) and len({len(c) for c in comps}) == 1:
            out["n_components"] = [_mean(col) for col in zip(*comps)]
        results.append(out)

    corruption = None
    if reports[0].corruption is not None:
        corruption = {k: v for k, v in reports[0].corruption.items() if k not in _SEED_KEYS}
        corruption["seed"] = seeds
        realized = [(r.corruption or {}).get("realized_rate") for r in reports]
        if all(isinstance(v, (int, float)) for v in realized):
            corruption["realized_rate"] = _mean(realized)
    model_acc = [r.model_test_accuracy for r in reports]
    extra = dict(reports[0].extra)
    extra["aggregate"] = {"n_runs": len(reports), "seeds": seeds}
    # Paired comparisons belong to one run each; the mean of the control rows stands in the results.
    extra.pop("comparisons", None)
    extra.pop("profile", None)
    extra.pop("selection", None)
    if extra.get("controls"):
        extra["controls"] = {name: {k: v for k, v in info.items() if k in ("source",)}
                             for name, info in extra["controls"].items()}
    if all(a is not None for a in model_acc):
        extra["model_test_accuracy_std"] = _std(model_acc)
        extra["model_test_accuracy_min"] = min(model_acc)
        extra["model_test_accuracy_max"] = max(model_acc)
    by_epoch = [r.extra.get("model_test_accuracy_by_epoch") for r in reports]
    if all(isinstance(b, dict) for b in by_epoch) and by_epoch:
        common = set.intersection(*(set(b) for b in by_epoch))
        extra["model_test_accuracy_by_epoch"] = {ep: _mean([b[ep] for b in by_epoch]) for ep in sorted(common, key=int)
                                                 if all(b[ep] is not None for b in by_epoch)}
    return cls(results, model=reports[0].model, dataset=reports[0].dataset, corruption=corruption,
               provenance=reports[0].provenance,
               model_test_accuracy=_mean(model_acc) if all(a is not None for a in model_acc) else None,
               n_test=reports[0].n_test, n_train=reports[0].n_train, extra=extra)
