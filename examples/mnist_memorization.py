"""Corrupt MNIST's labels, train the paper's MLP until it memorizes them, and probe every layer with MASC.

    python examples/mnist_memorization.py                             # 1,000 images of ../shared/data/mnist
    python examples/mnist_memorization.py path/to/mnist --subset 0 --preset paper    # all 60,000, as the paper

The data is a local folder of MNIST idx files (``train-images-idx3-ubyte.gz`` and friends, as LeCun's page
serves them), so nothing is downloaded. With the default 1,000-image subset and the fast preset, memorizing
p = 0.8 takes some 50-70 epochs of about 2 s each on an idle CPU core (estimated from 0.2 s per batch-128 step;
far longer on a busy machine); ``--max-epochs 20`` gives a quicker, not yet memorizing, look. The run folder
(``--output-dir``) then holds the checkpoint, ``metrics.jsonl`` and the report files, ready for
``examples/push_and_pull.py --run-dir``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The shared data folder sits beside the repository checkout.
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=str(DEFAULT_DATA),
                        help=f"MNIST idx folder (default: {DEFAULT_DATA})")
    parser.add_argument("--subset", type=int, default=1000,
                        help="training images, stratified by class (0: all; default: 1000)")
    parser.add_argument("--test-subset", type=int, default=0, help="test images (0: all 10,000; the default)")
    parser.add_argument("--corrupt", type=float, default=0.8, help="label corruption rate p (default: 0.8)")
    parser.add_argument("--model", default="mlp", help="paper model: mlp (default) or cnn")
    parser.add_argument("--preset", choices=("fast", "paper"), default="fast",
                        help="fast: Adam lr 1e-3, batch 128 (default); paper: the authors' SGD, far slower")
    parser.add_argument("--max-epochs", type=int, default=100, help="stop here if not memorized (default: 100)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of corruption, subset, init and order")
    parser.add_argument("--output-dir", default="runs/example-mnist", help="the run folder")
    args = parser.parse_args(argv)

    import numpy as np
    from torch.utils.data import DataLoader

    from masc_probe import ProbeRunner, corrupt_labels, load_data, load_model
    from masc_probe.training import preset_config, train

    # 1. Corruption. Each training label is, with probability p, replaced by a uniformly random class (possibly
    #    the true one); the true label travels beside it. Test labels are never corrupted.
    train_data = load_data(args.data, split="train", corrupt=args.corrupt, seed=args.seed)
    test_data = load_data(args.data, split="test")
    num_classes = train_data.features["label"].num_classes
    labels = train_data.with_format("numpy")  # reads the label columns without decoding any image
    given, true = labels["label"][:], labels["true_label"][:]
    same = np.array_equal(given, corrupt_labels(true, args.corrupt, num_classes=num_classes, seed=args.seed))
    print(f"p={args.corrupt}: {np.mean(given != true):.1%} of the {len(true):,} training labels differ from the "
          f"true ones (identical to corrupt_labels(true, {args.corrupt}, seed={args.seed}): {same})")
    if 0 < args.subset < len(train_data):
        train_data = train_data.train_test_split(train_size=args.subset, stratify_by_column="true_label",
                                                 seed=args.seed)["train"]
    if 0 < args.test_subset < len(test_data):
        test_data = test_data.train_test_split(train_size=args.test_subset, stratify_by_column="true_label",
                                               seed=args.seed)["train"]
    subset = train_data.with_format("numpy")
    realized = float(np.mean(subset["label"][:] != subset["true_label"][:]))

    # 2. Training until memorized: the preset's stop target for MNIST is 99.9% training accuracy on the
    #    corrupted labels. Rerunning the script resumes from the last finished epoch.
    config = preset_config(args.model, "mnist", preset=args.preset, seed=args.seed, num_classes=num_classes,
                           max_epochs=args.max_epochs, output_dir=args.output_dir,
                           corruption={"mode": "random", "rate": args.corrupt, "seed": args.seed})
    if args.batch_size is not None:
        config = config.replace(batch_size=args.batch_size)
    result = train(args.model, train_data, config=config)
    last = result.history[-1]
    print(f"trained {len(train_data):,} images for {result.epochs} epochs ({result.stopped}): training accuracy "
          f"{last['train_accuracy_corrupted']:.3f} on the corrupted labels, {last['train_accuracy_true']:.3f} "
          "on the true ones")

    # 3. Probing the saved checkpoint: MASC and nearest class mean on every layer, fitted once on the corrupted
    #    and once on the true training labels, scored on the clean test set.
    model = load_model(result.run_dir)
    runner = ProbeRunner(model, probes=("masc", "ncm"))
    runner.fit(DataLoader(train_data, batch_size=256))
    report = runner.evaluate(DataLoader(test_data, batch_size=256), model_name=args.model, dataset=args.data,
                             corruption={"mode": "random", "rate": args.corrupt, "seed": args.seed,
                                         "realized_rate": realized})
    run = Path(result.run_dir)
    report.to_json(run / "report.json")
    (run / "report.md").write_text(report.to_markdown() + "\n")
    report.plot(run / "accuracy_by_layer.png")

    print(report.to_markdown())
    best = report.best_layer("masc", "true")
    print(f"model test accuracy {report.model_test_accuracy:.3f}; MASC on {best['layer']} with the true labels "
          f"{best['test_accuracy']:.3f}. Files: {run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
