"""A training run in its own process, for the resume (kill + rerun) and multi-process (torchrun) tests.

Usage: python _train_script.py OUTPUT_DIR MAX_EPOCHS N_TRAIN PRESET BATCH_SIZE
"""

from __future__ import annotations

import logging
import sys

import torch

from _training_helpers import tuple_data


def main() -> None:
    out, max_epochs, n_train, preset, batch = sys.argv[1:6]
    torch.set_num_threads(1)  # the same thread count in every run, so that float sums are taken in the same order
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    from masc_probe.training import preset_config, train

    config = preset_config("mlp", "digits", preset=preset, num_classes=10, output_dir=out, cpu=True,
                           max_epochs=int(max_epochs), batch_size=int(batch), progress=False)  # fmt: skip
    result = train("mlp", tuple_data(int(n_train)), config=config)
    print(f"done epochs={result.epochs} stopped={result.stopped}", flush=True)


if __name__ == "__main__":
    main()
