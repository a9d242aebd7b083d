"""Run by tests/test_runner_distributed.py under `torchrun --nproc_per_node 2`: fit and evaluate on two shards.

Writes (rank 0) world.json, report.json and predictions.safetensors into the folder given as argv[1]; every rank
writes its own predictions so the test can check that the ranks agree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from _runner_helpers import data, mlp, tuples  # noqa: E402

from masc_probe.runner import ProbeRunner  # noqa: E402

RUNNER_KWARGS = {"probes": ("masc", "ncm", "linear"), "max_memory": 100_000, "progress": False,
                 "train_accuracy": True, "probe_kwargs": {"linear": {"epochs": 3}}}


def train_batches() -> list:
    x, yc, y = data(150)
    return tuples(x, yc, y, 16)


def eval_batches() -> list:
    xt, _, yt = data(60, seed=1)
    return [(xt[i:i + 16], yt[i:i + 16]) for i in range(0, 60, 16)]


def predictions(runner: ProbeRunner) -> dict[str, torch.Tensor]:
    xt = torch.cat([b[0] for b in eval_batches()])
    out = {"/".join(k): v for k, v in runner.predict(xt).items()}
    feats = runner.features(xt)
    for key, est in runner.estimators_.items():
        if key[1] == "masc":
            out["cos/" + "/".join(key)] = est.cosines(feats[key[0]])
    return out


def worker(out: str | Path) -> None:
    """One process's part; torch.distributed must be initialized (by torchrun + main, or by Accelerate)."""
    from safetensors.torch import save_file

    out = Path(out)
    rank, size = dist.get_rank(), dist.get_world_size()
    runner = ProbeRunner(mlp(), **RUNNER_KWARGS)
    runner.fit(train_batches(), shard=True)  # this rank takes batches rank, rank + 2, ...
    report = runner.evaluate(eval_batches(), shard=True)
    save_file({k: v.contiguous() for k, v in predictions(runner).items()}, str(out / f"predictions-{rank}.safetensors"))
    if rank == 0:
        report.to_json(out / "report.json")
        (out / "world.json").write_text(json.dumps({"world_size": size, "plan": runner.plan_.to_dict()}))
    dist.barrier()


def accelerate_worker(out: str) -> None:
    """Entry point for ``accelerate.debug_launcher``: Accelerate starts the gloo group on the CPU."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    # The child is forked from pytest: an Accelerator built by an earlier test left its single-process state in
    # Accelerate's shared singletons, which would make this one see 1 process. Start from a clean state.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == dist.get_world_size()
    worker(out)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    worker(out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
