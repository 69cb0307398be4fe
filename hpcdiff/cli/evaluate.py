"""``hpcdiff evaluate``: score predictions or a model against labels; cross-experiment tables.

Three ways to call it:

* ``--predictions P.h5 --labels L.h5``: score stored predictions.
* ``--model M.npz --features F.h5 --labels L.h5``: apply a model, then score.
* ``--train-features A.h5 --train-labels LA.h5 --test-features B.h5 --test-labels LB.h5``:
  train on A and on B (each with its split) and report side by side: A->A, B->B (held-out,
  within experiment), A->B (A's model on B's held-out frames) and A->B all (every B frame).

The report is printed as a table and written as JSON (``--report``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from hpcdiff.cli.train import add_job_argument, add_learn_arguments, learn_config, load_job_arg
from hpcdiff.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predictions or a model against labels, within or across experiments",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--predictions", help="predictions file from `hpcdiff predict`")
    p.add_argument("--model", help="model file (.npz), with --features")
    p.add_argument("--features", help="features file, with --model")
    p.add_argument("--labels", help="labels file for --predictions or --features")
    p.add_argument("--train-features", help="cross-experiment: experiment A features")
    p.add_argument("--train-labels", help="cross-experiment: experiment A labels")
    p.add_argument("--test-features", help="cross-experiment: experiment B features")
    p.add_argument("--test-labels", help="cross-experiment: experiment B labels")
    p.add_argument("--names", nargs=2, metavar=("A", "B"), default=("A", "B"), help="column names")
    p.add_argument("--model-out", help="cross-experiment: also save A's model here")
    p.add_argument("--report", help="report JSON to write")
    add_job_argument(p)
    add_learn_arguments(p)
    p.set_defaults(func=run)


def _mode(args: argparse.Namespace) -> str:
    cross = [args.train_features, args.train_labels, args.test_features, args.test_labels]
    if any(cross):
        if not all(cross):
            raise ConfigError(
                "cross-experiment evaluation needs all of --train-features, --train-labels, "
                "--test-features, --test-labels"
            )
        return "cross"
    if args.predictions:
        if not args.labels:
            raise ConfigError("--predictions needs --labels")
        return "predictions"
    if args.model or args.features:
        if not (args.model and args.features and args.labels):
            raise ConfigError("evaluating a model needs --model, --features and --labels")
        return "model"
    raise ConfigError(
        "nothing to evaluate: give --predictions and --labels, or --model, --features and "
        "--labels, or the four --train-*/--test-* files"
    )


def run(args: argparse.Namespace) -> int:
    from hpcdiff.io.featurefile import read_features
    from hpcdiff.io.labels import read_labels
    from hpcdiff.io.outputs import ensure_writable, provenance, write_json
    from hpcdiff.io.predictions import read_predictions
    from hpcdiff.learn import (
        DiffuseClassifier,
        align_labels,
        cross_experiment,
        evaluate,
        format_report,
        format_side_by_side,
        report_from_predictions,
        targets,
    )
    from hpcdiff.progress import Progress, print_summary

    mode = _mode(args)
    job = load_job_arg(args)
    cfg = learn_config(args, job)
    report_path = Path(args.report) if args.report else None
    if report_path is not None:
        ensure_writable(report_path, force=args.force)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"kind": f"evaluate-{mode}"}
    if mode == "predictions":
        preds = read_predictions(args.predictions)
        labels = align_labels(preds, read_labels(args.labels), source=args.labels)
        target = str(preds.attrs.get("target", "binary"))
        y, class_names = targets(labels, target)
        if tuple(class_names) != preds.class_names:
            raise ConfigError(
                f"{args.predictions} has classes {list(preds.class_names)} but {args.labels} "
                f"gives {list(class_names)} for target {target!r}"
            )
        report = report_from_predictions(y, preds.proba, class_names=preds.class_names)
        out.update(predictions=args.predictions, labels=args.labels, report=report)
        print(format_report(report, title=f"{args.predictions} ({report['n']} frames)"))
    elif mode == "model":
        model = DiffuseClassifier.load(args.model)
        fs = read_features(args.features)
        labels = align_labels(fs, read_labels(args.labels), source=args.labels)
        y, _ = targets(labels, model.metadata_.get("target", "binary"))
        report = evaluate(model, fs, y, source=args.features)
        out.update(model=args.model, features=args.features, labels=args.labels, report=report)
        print(
            format_report(report, title=f"{args.model} on {args.features} ({report['n']} frames)")
        )
    else:
        if args.model_out:
            ensure_writable(args.model_out, force=args.force)
        with Progress(3, label="evaluate", unit="steps", enabled=not args.quiet) as bar:
            fa = read_features(args.train_features)
            fb = read_features(args.test_features)
            la = align_labels(fa, read_labels(args.train_labels), source=args.train_labels)
            lb = align_labels(fb, read_labels(args.test_labels), source=args.test_labels)
            ya, names_a = targets(la, cfg.target)
            yb, names_b = targets(lb, cfg.target)
            if names_a != names_b:
                raise ConfigError(
                    f"class names differ: {args.train_labels} {list(names_a)} vs "
                    f"{args.test_labels} {list(names_b)}"
                )
            bar.update()
            try:
                reports, res_a = cross_experiment(
                    fa, ya, fb, yb, class_names=names_a, cfg=cfg, names=tuple(args.names)
                )
            except ValueError as exc:  # too few frames or classes for the split / PCA
                raise ConfigError(f"cannot train for cross-experiment evaluation: {exc}") from None
            bar.update()
            if args.model_out:
                res_a.model.save(args.model_out, force=args.force)
            bar.update()
        out.update(
            train_features=args.train_features,
            train_labels=args.train_labels,
            test_features=args.test_features,
            test_labels=args.test_labels,
            names=list(args.names),
            learn=dataclasses.asdict(cfg),
            reports=reports,
        )
        print(format_side_by_side(reports))
    out["provenance"] = provenance(job.config_hash() if job is not None else None)
    if report_path is not None:
        write_json(report_path, out, force=args.force)
    print_summary(
        "hpcdiff evaluate: done",
        {"mode": mode, "report": report_path or "(not written; give --report)",
         "time": f"{time.perf_counter() - t0:.1f} s"},
    )  # fmt: skip
    return 0
