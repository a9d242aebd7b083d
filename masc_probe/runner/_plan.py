"""The memory plan of a fit: which layers' second-moment statistics stream during the pass, which wait for it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from masc_probe.probes._registry import SPECS
from masc_probe.runner._config import RunnerConfig
from masc_probe.runner._keys import LayerKey

# Bytes per d² entry of one scatter-form class, as the probes count it against their max_memory: the float64
# accumulator and, once solved, its float32 decomposition factors (masc_probe.probes._stats).
_SCATTER_BYTES = 16


@dataclass
class Plan:
    """Where each layer's second-moment statistics live (see ``ProbeRunner``'s ``max_memory``).

    Layers are the pass's row keys (``_controls.LayerKey``); :meth:`named` spells them as ``ProbeRunner.plan_``
    and the report do.
    """

    stream: list[Any] = field(default_factory=list)  # accumulated during the pass
    deferred: list[Any] = field(default_factory=list)  # fitted after the pass from the cache, one probe at a time
    cached: list[Any] = field(default_factory=list)  # layers whose rows go to the disk cache
    stream_memory: dict[Any, int] = field(default_factory=dict)  # max_memory of each streaming probe, per layer
    deferred_memory: int = 0

    def named(self) -> Plan:
        """This plan with every layer as its string (``"fc1"``, ``"init::fc1"``)."""
        return dataclasses.replace(
            self, stream=[str(k) for k in self.stream], deferred=[str(k) for k in self.deferred],
            cached=[str(k) for k in self.cached], stream_memory={str(k): v for k, v in self.stream_memory.items()})

    def to_dict(self) -> dict[str, Any]:
        named = self.named()
        return {"stream": named.stream, "deferred": named.deferred, "cached": named.cached}


def make_plan(config: RunnerConfig, dims: dict[LayerKey, int], n_classes: int, n_sets: int) -> Plan:
    """Stream the layers whose scatter matrices fit half the budget (narrowest first); defer the others.

    A deferred probe is fitted alone, with three quarters of the budget; fitted probes kept in memory take an eighth
    (see ``ProbeStore``). Three quarters, not less: a class refused a scatter matrix keeps its rows, and when
    n_c > d its Gram solve needs more than the scatter would have (12 n_c² + 4 n_c d bytes against 16 d²). Measured
    with d = 4,096, n_c = 5,000, 10 classes: a 2 GiB allowance (8 scatter + 2 Gram classes) peaked 0.85 GiB higher
    and solved 25% slower than a 3 GiB one (all scatter).
    """
    second = [p for p in config.probes if SPECS[p].moments == 2]
    feature = [p for p in config.probes if not SPECS[p].streams]
    plan = Plan(deferred_memory=max(1, 3 * config.max_memory // 4))
    used = 0
    for layer in sorted(dims, key=lambda name: dims[name]):
        per_probe = n_classes * dims[layer] ** 2 * _SCATTER_BYTES
        cost = per_probe * n_sets * len(second)
        if second and used + cost > config.max_memory // 2:
            plan.deferred.append(layer)
        else:
            used += cost
            plan.stream.append(layer)
            plan.stream_memory[layer] = max(per_probe, 1)
    order = list(dims)
    plan.stream.sort(key=order.index)
    plan.deferred.sort(key=order.index)
    keep_all = bool(feature) or bool(config.train_accuracy)
    plan.cached = list(order) if keep_all else list(plan.deferred)
    return plan
