"""A training run in its own process, for the resume (kill + rerun) and multi-process (torchrun) tests.

Usage: python _train_script.py OUTPUT_DIR MAX_EPOCHS N_TRAIN PRESET BATCH_SIZE [PAUSE_AT_STEP]

With PAUSE_AT_STEP the process prints ``paused at step N`` after its N-th optimizer step and then waits to be
killed: the resume test kills it at that known point, however fast or slow the machine is.
"""

from __future__ import annotations

import logging
import sys
import time

import torch

from _training_helpers import tuple_data


def _pause_at(step: int) -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    done = 0

    def hook(*_: object) -> None:
        nonlocal done
        done += 1
        if done == step:
            print(f"paused at step {step}", flush=True)
            while True:
                time.sleep(60)

    register_optimizer_step_post_hook(hook)


def main() -> None:
    out, max_epochs, n_train, preset, batch = sys.argv[1:6]
    if len(sys.argv) > 6:
        _pause_at(int(sys.argv[6]))
    torch.set_num_threads(1)  # the same thread count in every run, so that float sums are taken in the same order
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    from masc_probe.training import preset_config, train

    config = preset_config("mlp", "digits", preset=preset, num_classes=10, output_dir=out, cpu=True,
                           max_epochs=int(max_epochs), batch_size=int(batch), progress=False)  # fmt: skip
    result = train("mlp", tuple_data(int(n_train)), config=config)
    print(f"done epochs={result.epochs} stopped={result.stopped}", flush=True)


if __name__ == "__main__":
    main()
