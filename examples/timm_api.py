"""The Python API on a timm model: tap its layers, fit MASC and a baseline probe on each, print the table.

    python examples/timm_api.py                       # timm/resnet18, random init, scikit-learn's digits at 32×32
    python examples/timm_api.py --model timm/mobilenetv3_small_100 --probes masc ncm linear
    python examples/timm_api.py --pretrained --dataset cifar10       # needs the Hub (weights and data)

Half of the training labels are corrupted (``--corrupt``), so every probe is fitted twice: on the corrupted labels
and on the true ones; both are scored against the clean test labels. Runs offline in well under a minute on a CPU.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="timm/resnet18", help="a timm/<name> spec (default: timm/resnet18)")
    parser.add_argument("--dataset", default="digits", help="dataset spec (default: the built-in digits)")
    parser.add_argument("--size", type=int, default=32, help="image size the model sees (default: 32)")
    parser.add_argument("--corrupt", type=float, default=0.5, help="label corruption rate p (default: 0.5)")
    parser.add_argument("--probes", nargs="+", default=["masc", "ncm"], help="probe names (default: masc ncm)")
    parser.add_argument("--pretrained", action="store_true", help="timm's pretrained weights (needs the Hub)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corruption (default: 0)")
    args = parser.parse_args(argv)

    import timm
    from torch.utils.data import DataLoader

    from masc_probe import ProbeRunner, list_layers, load_data, load_model

    normalize: tuple = (0.5, 0.5)  # the paper's preprocessing
    if args.pretrained:  # pretrained weights expect their own normalization
        config = timm.data.resolve_data_config(model=timm.create_model(args.model.removeprefix("timm/")))
        normalize = (config["mean"], config["std"])
    # Grey images are repeated to the 3 channels an ImageNet model takes; labels p-corrupted, true ones kept beside.
    common = {"input_size": args.size, "in_chans": 3, "normalize": normalize}
    train = load_data(args.dataset, split="train", corrupt=args.corrupt, seed=args.seed, **common)
    test = load_data(args.dataset, split="test", **common)
    num_classes = train.features["label"].num_classes

    model = load_model(args.model, num_classes=num_classes, in_chans=3, input_size=args.size,
                       pretrained=args.pretrained)
    print(f"{args.model}: {len(list_layers(model))} tappable layers; probing the default ones")

    runner = ProbeRunner(model, probes=args.probes)  # layers=None: the model's default probe points
    runner.fit(DataLoader(train, batch_size=256))
    report = runner.evaluate(DataLoader(test, batch_size=256), dataset=args.dataset)

    print(report.to_markdown())
    for labels in ("corrupted", "true"):
        best = report.best_layer("masc", labels)
        print(f"best layer for MASC on {labels} labels: {best['layer']} ({best['test_accuracy']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
