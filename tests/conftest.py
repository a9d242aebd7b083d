"""Shared test set-up: no network, an isolated Hugging Face cache, quiet progress bars, and where the real data is.

The environment is set before anything imports huggingface_hub or datasets, which read it at import time.

The real datasets (MNIST's idx files, ...) live outside the repository, in one folder named by ONE setting:
``MASC_PROBE_SHARED_DATA`` (default: ``shared/data`` beside the checkout, i.e. ``../shared/data``). Outside CI a test
that needs a missing dataset is skipped, and the skip names the folder and the setting; under CI (``CI=true``, which
``.ci/run`` sets) a missing folder fails the test, so CI never skips them silently.

Tests come in two tiers. ``make test`` runs the fast one (``-m "not slow"``): no processes started, no real data,
no training beyond a few epochs on a few hundred samples, one memorizer (:func:`memorizer`) trained once per
session for every test that needs a network that memorized, and two finished runs on the built-in digits, the
library's (:func:`digits_run`) and the CLI's (:func:`digits_cli_run`), made once per session for every test that
reads or copies a run folder. ``make test-slow`` runs the rest. What is slow is decided here, by rule
(:func:`pytest_collection_modifyitems`), not by memory: a test that asks for a fixture of ``SLOW_FIXTURES``
(directly or through another fixture), or lives in a module of ``SLOW_MODULES``. A guard holds the fast tier to it:
a fast test that starts a process or reads the real data fails, naming the fixture to ask for.
"""

from __future__ import annotations

import os
import tempfile

_HF_HOME = tempfile.mkdtemp(prefix="masc-probe-test-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")

import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import multiprocessing.process  # noqa: E402
import subprocess  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA_SETTING = "MASC_PROBE_SHARED_DATA"
SHARED_DATA = Path(os.environ.get(SHARED_DATA_SETTING) or Path(__file__).resolve().parents[2] / "shared" / "data")
SHARED_MNIST = SHARED_DATA / "mnist"  # tests that shell out (test_reproduce_paper) pass the folder on


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def shared_dataset(name: str, marker: str) -> Path:
    """``SHARED_DATA / name``, checked to hold *marker*; skipped outside CI, failed under CI, when it does not."""
    if _guard.fast:
        pytest.fail(f"a fast-tier test reads the real data ({name}): ask for the shared_{name} fixture, which "
                    "puts it in the slow tier", pytrace=False)
    folder = SHARED_DATA / name
    if not (folder / marker).is_file():
        reason = (f"real data {folder / marker} is absent: set {SHARED_DATA_SETTING} to the folder that holds "
                  f"{name}/ (now {SHARED_DATA})")
        if _in_ci():
            pytest.fail(f"{reason}; CI=true, so a missing dataset is an error, not a skip", pytrace=False)
        pytest.skip(reason)
    return folder


@pytest.fixture(scope="module")
def shared_mnist() -> Path:
    """The full MNIST idx folder (``$MASC_PROBE_SHARED_DATA/mnist``)."""
    return shared_dataset("mnist", "train-images.idx3-ubyte.gz")


@pytest.fixture(scope="module")
def shared_cifar10() -> Path:
    """CIFAR-10 as parquet (``$MASC_PROBE_SHARED_DATA/cifar10``)."""
    return shared_dataset("cifar10", "train.parquet")


@pytest.fixture(scope="session")
def processes() -> ModuleType:
    """The :mod:`subprocess` module, for a test that starts processes (a script, ``torchrun``, or the forked
    workers of ``accelerate.debug_launcher``): asking for it puts the test in the slow tier."""
    return subprocess


@pytest.fixture(scope="session")
def bench_script() -> Callable[[str], ModuleType]:
    """Load ``benchmarks/<name>.py`` as a module (its ``main(argv)`` runs in this process): tests of the benchmark
    scripts are slow-tier."""

    def load(name: str) -> ModuleType:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def long_training() -> None:
    """Asked for by a fixture or test that trains beyond a few epochs on a few hundred samples, i.e. past about
    3,000 sample-epochs (two epochs of the 1,438 built-in digits are the most a fast test trains): a memorizer of
    its own, a full demo run. It puts the test in the slow tier. The fast tier's one memorizer is :func:`memorizer`
    (27 epochs of 300 digits, trained once a session)."""


@pytest.fixture(scope="session")
def memorizer() -> Any:
    """The one memorizing network of the session: the paper's MLP trained on 300 digits at p = 0.8 until it fits
    the corrupted labels (``_training_helpers.MemorizedRun``: run folder, training result, train and test sets)."""
    from _training_helpers import memorized_run

    return memorized_run()


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The one finished pipeline run of the session (a ``RunResult``): the paper's MLP on the built-in digits at
    p = 0.8, two epochs, layers input and fc2, probes masc, ncm and linear, the fitted probes kept in ``probes/``
    (``_pipeline_helpers.SHARED_RUN_KWARGS``). Tests read it; a test that writes into a run folder copies it first
    (``shutil.copytree``). Writing into it fails the session's last test that used it, naming the files."""
    from _pipeline_helpers import SHARED_RUN_KWARGS

    from masc_probe.pipeline import run_experiment

    with _one_torch_thread():
        result = run_experiment(**SHARED_RUN_KWARGS, output_dir=tmp_path_factory.mktemp("digits-run") / "run")
    yield from _read_only(result, result.output_dir, "digits_run")


@pytest.fixture(scope="session")
def digits_cli_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, str, str]]:
    """``masc-probe --max-epochs 1 --layers input,fc1 --probes masc,ncm --keep-checkpoints dense`` run once a session
    in this process (``_pipeline_helpers.CLI_RUN_ARGV``): ``(run folder, exit code, stdout, stderr)``. One epoch of
    :func:`digits_run`'s training, which a resumed copy continues to its two. Copy it before writing into it."""
    import contextlib
    import io

    from _pipeline_helpers import CLI_RUN_ARGV

    from masc_probe.cli import main

    folder = tmp_path_factory.mktemp("digits-cli-run") / "run"
    out, err = io.StringIO(), io.StringIO()
    with _one_torch_thread(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*CLI_RUN_ARGV, "--output-dir", str(folder)])
    yield from _read_only((folder, code, out.getvalue(), err.getvalue()), folder, "digits_cli_run")


@pytest.fixture(scope="session")
def digits_p06_cli_run(tmp_path_factory: pytest.TempPathFactory, long_training: None) -> Path:
    """A short ``masc-probe train`` run folder on the built-in digits at p = 0.6 with margins (3 epochs: the label
    issue detector reads the layers of whatever network it is given; memorizing is not needed and would take two
    minutes more), shared by the label-issues CLI tests and the gallery's."""
    from masc_probe.cli import main

    out = tmp_path_factory.mktemp("digits-p06") / "run"
    code = main(["train", "--dataset", "digits", "--corrupt", "0.6", "--max-epochs", "3", "--record-margins",
                 "--keep-checkpoints", "final", "--output-dir", str(out), "--quiet"])
    assert code == 0
    return out


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """One torch thread while a shared run trains: on a 2-core machine shared with other jobs, 2 threads crawl."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _read_only(value: Any, folder: Path, name: str) -> Iterator[Any]:
    """Yield *value*; afterwards fail if any file under *folder* was added, removed or rewritten."""
    from _pipeline_helpers import folder_state

    before = folder_state(folder)
    yield value
    after = folder_state(folder)
    changed = sorted(f for f in before.keys() | after.keys() if before.get(f) != after.get(f))
    assert not changed, f"a test wrote into the shared {name} folder (copy it first): {changed[:5]}"


@pytest.fixture
def keep_logger_levels():
    """Restore the levels of the loggers the benchmark script quiets (as a script may) after a test that ran it."""
    import logging

    names = ("", "accelerate", "masc_probe", "reproduce_paper")
    saved = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in saved.items():
        logging.getLogger(n).setLevel(level)


# ------------------------------------------------------------------------------------------------------ the tiers
# What puts a test in the slow tier. A fixture counts wherever it is asked for: by the test, or by a fixture the
# test uses (pytest's fixture closure).
SLOW_FIXTURES = {
    "processes": "starts processes",
    "shared_mnist": "reads real data",
    "shared_cifar10": "reads real data",
    "bench_script": "tests a benchmark script",
    "long_training": "trains beyond a few epochs on a few hundred samples",
}
# Whole modules, each for its one reason.
SLOW_MODULES = {
    "test_reproduce_paper.py": "tests benchmarks/reproduce_paper.py (and gpu_check.sh's dry run on real MNIST)",
    "test_bench_device.py": "tests the benchmark scripts, each in its own process",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        reasons = [SLOW_FIXTURES[name] for name in getattr(item, "fixturenames", ()) if name in SLOW_FIXTURES]
        if item.path.name in SLOW_MODULES:
            reasons.append(SLOW_MODULES[item.path.name])
        if reasons and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow(reason="; ".join(dict.fromkeys(reasons))))


class _Guard:
    """Whether the test being set up, run or torn down belongs to the fast tier."""

    fast = False


_guard = _Guard()


# What ctypes.util.find_library runs to find a shared library (torch, cuda-pathfinder and the runner's malloc_trim
# look up libc and libdl once per process), and what matplotlib runs to list the system's fonts when it builds its
# font cache (once per user, so on a fresh machine only): lookups, not processes a test chose to start.
_LIBRARY_LOOKUPS = {"ldconfig", "gcc", "cc", "ld", "objdump", "fc-list"}


def _refuse_in_fast_tier(what: str) -> None:
    if _guard.fast:
        pytest.fail(f"a fast-tier test {what}: ask for the `processes` fixture, which puts it in the slow tier "
                    "(tests/conftest.py)", pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    popen_init = subprocess.Popen.__init__
    start = multiprocessing.process.BaseProcess.start

    def guarded_popen(self: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
        program = args if isinstance(args, (str, bytes, os.PathLike)) else (list(args) or [""])[0]
        if Path(os.fsdecode(program).split()[0] if program else "").name not in _LIBRARY_LOOKUPS:
            _refuse_in_fast_tier(f"started a process ({args!r:.80})")
        popen_init(self, args, *rest, **kwargs)

    def guarded_start(self: Any) -> None:
        _refuse_in_fast_tier("started a multiprocessing worker")
        start(self)

    subprocess.Popen.__init__ = guarded_popen  # type: ignore[method-assign]
    multiprocessing.process.BaseProcess.start = guarded_start  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Hold the fast tier to its rules for the whole of a test: set-up (module fixtures too), call, tear-down."""
    _guard.fast = item.get_closest_marker("slow") is None
    try:
        return (yield)
    finally:
        _guard.fast = False
