"""Two real CPU processes (torchrun, gloo) train the same weights as one process with the same global batch."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import ModuleType

import torch
from safetensors.torch import load_file

from _training_helpers import tuple_data
from masc_probe.training import preset_config, train

HERE = Path(__file__).resolve().parent


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_processes_match_one_after_an_epoch(tmp_path: Path, processes: ModuleType) -> None:
    # The paper's SGD preset: updates are linear in the gradients, so summation order changes them only at 1e-8.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "_train_script.py"), str(tmp_path / "two"), "1", "256", "paper", "64"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}
    done = processes.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    masc = json.loads((tmp_path / "two" / "config.json").read_text())["masc_probe"]
    assert masc["training"]["num_processes"] == 2 and masc["training"]["batch_size"] == 64

    data = tuple_data(256)
    config = preset_config("mlp", "digits", num_classes=10, max_epochs=1, batch_size=64, cpu=True, progress=False)
    one = train("mlp", data, config=config.replace(output_dir=str(tmp_path / "one")))
    assert json.loads((one.run_dir / "config.json").read_text())["masc_probe"]["training"]["num_processes"] == 1

    two_w, one_w = load_file(tmp_path / "two" / "model.safetensors"), load_file(one.run_dir / "model.safetensors")
    init = load_file(tmp_path / "two" / "checkpoints" / "epoch-0000" / "model.safetensors")
    assert _max_diff(init, load_file(one.run_dir / "checkpoints" / "epoch-0000" / "model.safetensors")) == 0
    moved = _max_diff(one_w, init)
    assert _max_diff(two_w, one_w) < 1e-6 < moved
    # The comparison can fail: half the batch (what per-process batches would give) moves the weights elsewhere.
    half = train("mlp", data, config=config.replace(output_dir=str(tmp_path / "half"), batch_size=32))
    assert _max_diff(load_file(half.run_dir / "model.safetensors"), one_w) > 100 * _max_diff(two_w, one_w)
    # Both processes logged the same metrics as one process would (gather_for_metrics over the two shards).
    rows = [json.loads(p.read_text()) for p in (tmp_path / "two" / "metrics.jsonl", one.run_dir / "metrics.jsonl")]
    assert rows[0]["train_accuracy_corrupted"] == rows[1]["train_accuracy_corrupted"]
    assert abs(rows[0]["loss"] - rows[1]["loss"]) < 1e-6
