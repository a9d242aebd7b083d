"""What the CLI prints after its one library call: a run's summary (the report's headline, then the trained network's
per-layer table; the control table lives in report.md and report.html), a training's last epoch, a model's layers,
relabeling's and label issues' outcomes, and where the files went. With ``--quiet`` only the folder or file a
script wants.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def say(message: str, *, quiet: bool, path: Any = None) -> None:
    """Print *message*; with *quiet*, only *path* (when given)."""
    # --quiet keeps stdout to the one thing a script wants: where the results are.
    print(path if quiet and path is not None else message)


def show_report(result: Any, *, quiet: bool) -> None:
    """The report's summary (headline first, then the trained network's layer table) and where the files are (only
    the output folder with --quiet)."""
    if not quiet:
        from masc_probe.report import summary_text

        summary = summary_text(result.report)
        print(summary)
        for name, path in result.files.items():
            print(f"  {name:<26} {path}")
        for line in _notes(result.report, summary):
            print(line)
    say(f"results in {result.output_dir}", quiet=quiet, path=result.output_dir)


def _notes(report: Any, summary: str) -> list[str]:
    """The report's own sentences on what it could not do (a control left out, the model's accuracy missing) that
    its summary does not say already."""
    extra = getattr(report, "extra", {}) or {}
    lines = [str(why) for why in (extra.get("controls_skipped") or {}).values()]
    if extra.get("model_test_accuracy_note"):
        lines.append(f"Model's own test accuracy: {extra['model_test_accuracy_note']}.")
    return [line for line in lines if line.rstrip(".") not in summary]


def show_training(result: Any, *, quiet: bool) -> None:
    """The last epoch of a training (how it stopped, its accuracies) and the run folder."""
    history = result.training.history
    if history and not quiet:
        last = history[-1]
        print(f"epoch {last['epoch']} ({result.training.stopped}): train accuracy on the given labels "
              f"{last['train_accuracy_corrupted']:.4f}, test accuracy {_num(last.get('test_accuracy'))}")
    say(f"run folder: {result.output_dir}", quiet=quiet, path=result.output_dir)


def show_layers(table: list[tuple[str, bool]], *, nodes: bool) -> None:
    """A model's layer names, ``*`` marking those probed by default."""
    for name, default in table:
        print(f"{'*' if default else ' '} {name}")
    more = "" if nodes else "; --all also lists the torch.fx nodes between modules"
    print(f"(* probed by default: {sum(d for _, d in table)} of {len(table)} layers; choose others with --layers"
          f"{more})")


def show_relabel(results: list[Any], *, quiet: bool) -> None:
    """Each relabeling's layer, labels changed, repaired and broken, and accuracy before and after."""
    for r in results:
        if not quiet:
            kind = ("ORACLE BOUND (true-label subspaces, leaks the answer)" if r.oracle
                    else f"relabeling by {r.probe}" if r.detector == "issues" else "MASC relabeling")
            print(f"{kind}: layer {r.layer} (chosen against {_chosen_by(r.choosing_labels)}), {r.n_changed} of "
                  f"{r.n_train} labels changed, repaired "
                  f"{_num(r.repaired)}, broken {_num(r.broken)}; accuracy on the held-out 80% of the test set "
                  f"{r.accuracy_before:.4f} -> {r.accuracy_after:.4f} (best fine-tuning epoch {r.best_epoch})"
                  + (f"; on the true labels (ceiling) {r.accuracy_ceiling:.4f}" if r.accuracy_ceiling is not None
                     else ""))
        say(f"wrote {Path(r.output_dir) / 'relabel.csv'} and relabel.json", quiet=quiet, path=r.output_dir)


def show_issues(issues: Any, out: Path, *, quiet: bool, gallery: bool) -> None:
    """The chosen layer x probe, the estimated share of wrong labels, the flagged count, the metrics against the
    true labels when known, and the files written."""
    if not quiet:
        s = issues.summary()
        up = s["runner_up"]
        print(f"chosen: {s['probe']} at {s['layer']} ({s['criterion']} accuracy "
              f"{_num(s['select_accuracy'] if s['criterion'] == 'select' else s['heldout_accuracy'])}"
              + (f" against {_chosen_by(s['choosing_labels'])})" if s["choosing_labels"] else ")")
              + (f"; runner-up {up['probe']} at {up['layer']}" if up else ""))
        print(f"estimated share of wrong labels {s['noise_rate']:.4f} (confident joint); {s['n_flagged']} of "
              f"{s['n_samples']} flagged ({s['flag']}; ranked by "
              + (f"{s['ranking']})" if s["method"] == "probe" else "AUM)"))
        for name, m in (s["metrics"] or {}).items():
            print(f"  against the true labels, {name}: AUROC {_num(m['auroc'])}, AP {_num(m['average_precision'])}, "
                  f"precision {m['precision']:.4f}, recall {m['recall']:.4f}, F1 {m['f1']:.4f}, lift top 1% "
                  f"{_num(m['lift_top_1pct'])}, top 5% {_num(m['lift_top_5pct'])}")
    say(f"wrote {out / 'label_issues.csv'}, label_issues.json" + (", label_issues.png" if gallery else ""),
        quiet=quiet, path=out)


def _chosen_by(record: dict[str, Any] | None) -> str:
    """Which labels a layer was chosen against, in words (label issues' and relabel's ``choosing_labels``)."""
    if record and record.get("kind") == "clean":
        return "the true labels" + (f" ({record['fallback']})" if record.get("fallback") else "")
    if record and record.get("kind") == "noisy":
        return (f"labels re-drawn by the run's recipe ({record['mode']}, p = {record['rate']:g}, seed "
                f"{record['seed']}, realized {record['realized_rate']:.3f})")
    return "the labels as given"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"
