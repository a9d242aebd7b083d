"""Run by tests/test_runner_distributed.py under `torchrun --nproc_per_node 2`: fit and evaluate on two shards.

Writes (rank 0) world.json, report.json and predictions.safetensors into the folder given as argv[1]; every rank
writes its own predictions so the test can check that the ranks agree.

``shard_worker`` (run by ``accelerate.debug_launcher``) checks that each process reads only its shard: datasets that
count their decodes per process, read through a plain DataLoader (``shard=True``), a DataLoader Accelerate prepared
(``even_batches`` repeats samples in the last batches) and a streamed Hugging Face dataset.
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
        if key[1] == "masc" and key[0] in feats:  # features() are the trained network's; a control's key has "::"
            out["cos/" + "/".join(key)] = est.cosines(feats[key[0]])
    return out


# The shard checks: sizes with uneven tails (150 = 9 x 16 + 6 training rows, 70 = 4 x 16 + 6 test rows: with 2
# processes Accelerate pads rank 1's last training batch and gives rank 1 a whole extra test batch of repeats).
SHARD_KWARGS = {"probes": ("masc", "ncm"), "max_memory": 100_000, "progress": False, "train_accuracy": True}
N_TRAIN, N_TEST, BATCH = 150, 70, 16


class CountingDataset(torch.utils.data.Dataset):
    """(x, y corrupted, y true, index) rows that log every decode (``__getitem__``) of this process to a file."""

    def __init__(self, n: int, seed: int, log: Path | None) -> None:
        self.x, self.yc, self.y = data(n, seed=seed)
        self.log = log

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple:
        if self.log is not None:
            with open(self.log, "a") as fh:
                fh.write(f"{i}\n")
        return self.x[i], self.yc[i], self.y[i], i


def shard_data(kind: str, log_dir: Path | None, rank: int, prefix: str | None = None) -> tuple:
    """(train, test) of one scenario: "plain" DataLoaders, or "stream" HF iterable datasets in DataLoaders; each
    decode is logged to LOG_DIR/PREFIX-{train,test}-RANK.log (PREFIX: the kind, unless given)."""
    log = (lambda name: None if log_dir is None else log_dir / f"{prefix or kind}-{name}-{rank}.log")
    if kind == "plain":
        return (torch.utils.data.DataLoader(CountingDataset(N_TRAIN, 0, log("train")), batch_size=BATCH),
                torch.utils.data.DataLoader(CountingDataset(N_TEST, 1, log("test")), batch_size=BATCH))
    import datasets

    def stream(n: int, seed: int, path: Path | None) -> torch.utils.data.DataLoader:
        x, yc, y = data(n, seed=seed)
        table = datasets.Dataset.from_dict({"x": x.numpy(), "label": yc.numpy(), "true_label": y.numpy(),
                                            "index": list(range(n))})

        def decode(row: dict) -> dict:
            if path is not None:
                with open(path, "a") as fh:
                    fh.write(f"{row['index']}\n")
            return row

        # 4 shards: 2 per process, so each process decodes only its own.
        rows = table.to_iterable_dataset(num_shards=4).map(decode).with_format("torch")
        return torch.utils.data.DataLoader(rows, batch_size=BATCH)

    return stream(N_TRAIN, 0, log("train")), stream(N_TEST, 1, log("test"))


def shard_report(train, test, *, shard: bool) -> dict:
    runner = ProbeRunner(mlp(), **SHARD_KWARGS)
    return runner.fit(train, shard=shard).evaluate(test, shard=shard).to_dict()


def shard_worker(out: str) -> None:
    """Entry point for ``accelerate.debug_launcher``: the shard scenarios, each report written by rank 0."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    torch.set_num_threads(1)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True)  # even_batches=True, Accelerate's default
    rank = dist.get_rank()
    assert accelerator.num_processes == dist.get_world_size() == 2
    out = Path(out)
    reports = {}
    train, test = shard_data("plain", out, rank)
    reports["plain"] = shard_report(train, test, shard=True)
    # The same loaders prepared by Accelerate: each process gets its batches, the last ones padded with repeats.
    train, test = shard_data("plain", None, rank)
    prepared_train, prepared_test = accelerator.prepare(train, test)
    rows: list = [None, None]  # rows each process's prepared loader yields, repeats included
    dist.all_gather_object(rows, [sum(len(b[1]) for b in loader) for loader in (prepared_train, prepared_test)])
    reports["prepared"] = shard_report(prepared_train, prepared_test, shard=False)
    reports["prepared_rows"] = rows
    train, test = shard_data("stream", out, rank)
    reports["stream"] = shard_report(train, test, shard=True)
    if rank == 0:
        (out / "shard_reports.json").write_text(json.dumps(reports))
    dist.barrier()


def whole_worker(out: str) -> None:
    """Entry point for ``accelerate.debug_launcher``: every process passes the same whole plain loaders with the
    default shard=False (as a script run under torchrun would); then rank 1 passes a shorter copy of rank 0's."""
    import logging

    from masc_probe.errors import InputError

    torch.set_num_threads(1)
    out = Path(out)
    rank = dist.get_rank()
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("masc_probe.runner")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        train, test = shard_data("plain", out, rank, prefix="whole")
        report = shard_report(train, test, shard=False)
        whole = CountingDataset(N_TRAIN, 0, out / f"overlap-{rank}.log")
        part = torch.utils.data.Subset(whole, range(N_TRAIN - BATCH * rank))  # rank 1: all but the last batch
        train = torch.utils.data.DataLoader(part, batch_size=BATCH)
        try:
            ProbeRunner(mlp(), **SHARD_KWARGS).fit(train)
            error = None
        except InputError as exc:
            error = str(exc)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    said: list = [None, None]
    dist.all_gather_object(said, {"messages": messages, "error": error})
    if rank == 0:
        (out / "whole.json").write_text(json.dumps({"report": report, "ranks": said}))
    dist.barrier()


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
