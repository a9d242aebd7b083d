"""Publish a run to a Hub and pull it back: the memorizing checkpoint, its MASC report and its model card.

    HF_TOKEN=hf_... python examples/push_and_pull.py --repo-id you/mlp-digits-p0.8
    HF_ENDPOINT=http://127.0.0.1:8080 HF_TOKEN=... python examples/push_and_pull.py --repo-id you/run
    python examples/push_and_pull.py --dry-run          # no Hub: writes the files a push would upload

A push needs a Hub and a token with write access: huggingface.co by default, or the Hub at ``HF_ENDPOINT`` (read when
huggingface_hub is imported, so set it in the environment), with the token from ``HF_TOKEN`` or ``hf auth login``.
``--dry-run`` needs neither: it writes the exact files of the push into ``--dry-run-dir`` and loads them back from
there. Without ``--run-dir`` a run is made first: the paper's MLP on the built-in digits with 80% of the labels
corrupted, trained until memorized with the fast preset (about a minute or two on a CPU).

What is pushed (one commit): ``model.safetensors`` + ``config.json`` (loadable with
``masc_probe.load_model("hf-hub:<repo>")``), ``masc/report.json``, ``masc/report.md``, ``masc/accuracy_by_layer.png``,
``metrics.jsonl`` and a ``README.md`` model card. Never the resume state, never a pickle.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo-id", default=None, help="user/name on the Hub (required unless --dry-run)")
    parser.add_argument("--run-dir", default=None, help="an existing run folder to publish (default: make one)")
    parser.add_argument("--dry-run", action="store_true", help="write the files locally instead of pushing")
    parser.add_argument("--dry-run-dir", default="runs/example-push-dry-run", help="where --dry-run writes")
    parser.add_argument("--work-dir", default="runs/example-push", help="where a new run is made")
    parser.add_argument("--max-epochs", type=int, default=None, help="cap the new run's training (default: none)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    args = parser.parse_args(argv)
    if args.repo_id is None and not args.dry_run:
        parser.error("--repo-id is required to push (or use --dry-run)")

    import torch
    from huggingface_hub import constants

    from masc_probe import ProbeReport, load_model
    from masc_probe.errors import HubError
    from masc_probe.hub import load_report, push_run
    from masc_probe.models import read_config
    from masc_probe.pipeline import run_experiment

    run_dir = Path(args.run_dir) if args.run_dir else None
    if run_dir is None:
        result = run_experiment(model="mlp", dataset="digits", corrupt=0.8, probes=("masc", "ncm"),
                                max_epochs=args.max_epochs, output_dir=args.work_dir)
        run_dir = result.output_dir
    repo_id = args.repo_id or "me/mlp-digits-p0.8"  # a dry run only uses it in the card's loading snippets

    if args.dry_run:
        out = Path(push_run(run_dir, repo_id, dry_run_dir=args.dry_run_dir))
        print(f"dry run: the push of {run_dir} would upload")
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            print(f"  {path.relative_to(out)}  ({path.stat().st_size:,} bytes)")
        # "Pull" from the written folder: the same calls a user makes on a pushed repo, minus the download.
        report = ProbeReport.from_json_file(out / "masc" / "report.json")
        pulled = load_model(out)
    else:
        print(f"pushing {run_dir} to {repo_id} on {constants.ENDPOINT}")
        try:
            print("commit:", push_run(run_dir, repo_id, private=args.private))
            report = load_report(repo_id)  # JSON only; nothing from the Hub is unpickled or executed
            pulled = load_model(f"hf-hub:{repo_id}")
        except HubError as exc:  # one line that says what failed: no Hub, no token, no access
            print(f"error: {exc}", file=sys.stderr)
            return 1

    local = load_model(run_dir)
    shape = read_config(run_dir)["input_size"]  # [C, H, W], from config.json's "masc_probe" key
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.equal(pulled(x), local(x))
    best = report.best_layer("masc", "true")
    print(f"pulled model gives the same outputs as the local checkpoint: {same}")
    print(f"pulled report: model test accuracy {report.model_test_accuracy:.3f}, best MASC (true labels) "
          f"{best['test_accuracy']:.3f} at {best['layer']}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
