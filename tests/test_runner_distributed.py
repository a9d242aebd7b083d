"""Two real CPU processes (gloo) give the same probes, predictions and report as one process.

Some tests start them with ``accelerate.debug_launcher`` (forked: no second import of torch), others with
``torchrun`` in a subprocess, as a user would (the runner, and the pipeline's probe path); all are slow-tier (they
ask for the ``processes`` fixture).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from _runner_distributed_script import RUNNER_KWARGS, accelerate_worker, eval_batches, predictions, train_batches

from masc_probe.runner import ProbeRunner

SCRIPT = Path(__file__).parent / "_runner_distributed_script.py"



def assert_same_report(got: dict, want: dict) -> None:
    """Two processes give the one-process report: every key equal; MASC's profile with the same sizes, and the
    same k_c and accuracy at the variance fractions up to the paper's 0.99 (the larger sizes put k_c near the rank, where
    every class's cosine is near 1 and float sums added in another order may flip near-ties); the selection's split,
    labels and settings the same (its choices may follow those flips)."""
    got, want = dict(got), dict(want)
    got_profile, want_profile = got.pop("profile", None), want.pop("profile", None)
    got_sel, want_sel = got.pop("selection", None), want.pop("selection", None)
    assert got == want
    assert (got_profile is None) == (want_profile is None) and (got_sel is None) == (want_sel is None)
    if got_profile is not None:
        assert [(r["layer"], r["labels"], r.get("control"), r["size"]) for r in got_profile] == \
            [(r["layer"], r["labels"], r.get("control"), r["size"]) for r in want_profile]
        # The paper's size and the smaller fractions: the same k_c and predictions, as the results at 0.99 show.
        for a, b in zip(got_profile, want_profile, strict=True):
            if isinstance(a["size"], float) and a["size"] <= 0.99:
                assert (a["k"], a["accuracy"]) == (b["k"], b["accuracy"]), (a, b)
    if got_sel is not None:
        # The same images split the same way (the sharder's indices are the rows' positions in the whole data).
        for key in ("rule", "split", "seed", "n_choose", "n_eval", "choosing_index", "evaluation_index", "labels"):
            assert got_sel[key] == want_sel[key], key

def test_two_processes_match_one_accelerate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            processes: ModuleType) -> None:
    from accelerate import Accelerator, debug_launcher  # noqa: F401  (imported here, the forked children inherit it)

    import masc_probe.layers  # noqa: F401
    import masc_probe.probes  # noqa: F401

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    debug_launcher(accelerate_worker, args=(str(tmp_path),), num_processes=2)
    _check_against_one_process(tmp_path)


def test_two_processes_match_one_torchrun(tmp_path: Path, processes: ModuleType) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    proc = processes.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_against_one_process(tmp_path)


def _check_against_one_process(tmp_path: Path) -> None:
    world = json.loads((tmp_path / "world.json").read_text())
    assert world["world_size"] == 2
    assert world["plan"]["stream"] and world["plan"]["deferred"]  # both reduce-then-solve and rows-from-cache ran

    from safetensors.torch import load_file

    rank0, rank1 = (load_file(tmp_path / f"predictions-{r}.safetensors") for r in (0, 1))
    # One process over the same batches in the order the two shards concatenate (rank 0's, then rank 1's): the
    # row cache, and so the linear probe's training order, is then the same.
    batches = train_batches()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = ProbeRunner(__import__("_runner_helpers").mlp(), **RUNNER_KWARGS)
        single.fit(batches[0::2] + batches[1::2])
        report = single.evaluate(eval_batches())
        reference = predictions(single)
    finally:
        torch.set_num_threads(before)
    assert rank0.keys() == rank1.keys() == reference.keys()
    for key, want in reference.items():
        if key.startswith("cos/"):
            torch.testing.assert_close(rank0[key], want, atol=2e-5, rtol=0)
            torch.testing.assert_close(rank1[key], want, atol=2e-5, rtol=0)
        else:
            assert torch.equal(rank0[key], want), key
            assert torch.equal(rank1[key], want), key
    assert_same_report(json.loads((tmp_path / "report.json").read_text()), report.to_dict())


# ------------------------------------------------------------------------------------------------ per-process shards
def _decoded(folder: Path, name: str) -> list[list[int]]:
    return [[int(i) for i in (folder / f"{name}-{r}.log").read_text().split()] for r in (0, 1)]


def test_each_process_reads_its_shard_and_repeats_count_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              processes: ModuleType) -> None:
    from accelerate import debug_launcher
    from _runner_distributed_script import BATCH, N_TEST, N_TRAIN, SHARD_KWARGS, shard_data, shard_worker

    import masc_probe.layers  # noqa: F401
    import masc_probe.probes  # noqa: F401

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    debug_launcher(shard_worker, args=(str(tmp_path),), num_processes=2)
    reports = json.loads((tmp_path / "shard_reports.json").read_text())

    # Each process decoded its half of the data once, and nothing else (a plain DataLoader with shard=True, and
    # a streamed dataset split by node).
    for kind in ("plain", "stream"):
        for name, n in (("train", N_TRAIN), ("test", N_TEST)):
            rank0, rank1 = _decoded(tmp_path, f"{kind}-{name}")
            assert len(rank0) + len(rank1) == n, (kind, name)
            assert sorted(rank0 + rank1) == list(range(n)), (kind, name)
            assert abs(len(rank0) - len(rank1)) <= 2 * BATCH, (kind, name, len(rank0), len(rank1))
    # Accelerate's even_batches repeated samples: the prepared loaders yielded more rows than there are samples.
    (train0, test0), (train1, test1) = reports["prepared_rows"]
    assert train0 + train1 > N_TRAIN and test0 + test1 > N_TEST

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train, test = shard_data("plain", None, 0)
        single = ProbeRunner(__import__("_runner_helpers").mlp(), **SHARD_KWARGS).fit(train).evaluate(test).to_dict()
        train, test = shard_data("stream", None, 0)
        single_stream = ProbeRunner(__import__("_runner_helpers").mlp(), **SHARD_KWARGS).fit(train).evaluate(test)
    finally:
        torch.set_num_threads(before)
    assert single["n_train"] == N_TRAIN and single["n_test"] == N_TEST
    # Same numbers from 2 processes as from 1: plain shards, the prepared loader (repeats counted once), streams.
    assert_same_report(reports["plain"], single)
    assert_same_report(reports["prepared"], single)
    assert_same_report(reports["stream"], single_stream.to_dict())


def test_the_same_whole_loader_in_every_process_is_sharded_before_the_first_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: ModuleType) -> None:
    """Under torchrun a script builds the same plain loaders in every process and calls fit/evaluate with the
    default shard=False: the processes see that from one batch, shard it and say so once, and the report is one
    process's; loaders that only overlap fail at once, not after reading everything (issue 20)."""
    from accelerate import debug_launcher
    from _runner_distributed_script import BATCH, N_TEST, N_TRAIN, SHARD_KWARGS, shard_data, whole_worker

    import masc_probe.layers  # noqa: F401
    import masc_probe.probes  # noqa: F401

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    debug_launcher(whole_worker, args=(str(tmp_path),), num_processes=2)
    result = json.loads((tmp_path / "whole.json").read_text())
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train, test = shard_data("plain", None, 0)
        single = ProbeRunner(__import__("_runner_helpers").mlp(), **SHARD_KWARGS).fit(train).evaluate(test)
    finally:
        torch.set_num_threads(before)
    assert_same_report(result["report"], single.to_dict())
    # Each process decoded the first batch to compare it, then only its own half.
    for name, n in (("train", N_TRAIN), ("test", N_TEST)):
        rank0, rank1 = _decoded(tmp_path, f"whole-{name}")
        assert sorted(rank0[BATCH:] + rank1[BATCH:]) == list(range(n)), name
        assert rank0[:BATCH] == rank1[:BATCH] == list(range(BATCH)), name
    for said in result["ranks"]:
        assert sum("every process was given the same whole data" in m for m in said["messages"]) == 2  # fit, eval
        assert "processes [0, 1] were given data that starts with the same batch" in said["error"]
        assert f"lengths [{-(-N_TRAIN // BATCH)}, {-(-(N_TRAIN - BATCH) // BATCH)}]" in said["error"]
    # The overlapping loaders were refused after one batch each, before any other was read.
    assert [len(r) for r in _decoded(tmp_path, "overlap")] == [BATCH, BATCH]


def test_the_pipelines_probe_path_in_two_processes_matches_one(tmp_path: Path, processes: ModuleType) -> None:
    """``masc-probe probe``'s library call (probe_source) under torchrun: one run folder with the report of one
    process. The numbers agree exactly; only the solver may differ (one process may take MASC's Gram form, which
    does not add up across processes; two take the scatter form; both are exact)."""
    from _pipeline_distributed_script import PROBE_KWARGS

    from masc_probe.pipeline import probe_source

    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    proc = processes.run([str(torchrun), "--standalone", "--nproc_per_node", "2",
                          str(Path(__file__).parent / "_pipeline_distributed_script.py"), str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        probe_source("mlp", output_dir=tmp_path / "one", **PROBE_KWARGS)
    finally:
        torch.set_num_threads(before)

    def numbers(folder: Path) -> dict:
        report = json.loads((folder / "report.json").read_text())
        report["provenance"].pop("solver")
        for row in report["results"]:
            row.pop("solver", None)
        return report

    assert_same_report(numbers(tmp_path / "two"), numbers(tmp_path / "one"))
    assert {p.name for p in (tmp_path / "two").iterdir()} == {p.name for p in (tmp_path / "one").iterdir()}
