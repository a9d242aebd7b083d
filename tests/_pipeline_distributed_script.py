"""Run by tests/test_runner_distributed.py under ``torchrun --nproc_per_node 2``: the pipeline's probe path (what
``masc-probe probe`` calls) in two processes, into the folder given as argv[1]."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

PROBE_KWARGS = {"dataset": "digits", "corrupt": 0.8, "seed": 0, "layers": ["input", "fc2"], "probes": ("masc", "ncm"),
                "progress": False, "device": "cpu"}


def main(out: str) -> None:
    from masc_probe.pipeline import probe_source

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    probe_source("mlp", output_dir=out, **PROBE_KWARGS)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
