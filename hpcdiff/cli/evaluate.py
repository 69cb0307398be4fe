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

from hpcdiff.cli.train import (
    LABELS_HELP,
    add_class_names_argument,
    add_job_argument,
    add_learn_arguments,
    class_names_arg,
    learn_config,
    load_job_arg,
)
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
    p.add_argument(
        "--labels",
        nargs="+",
        metavar="LABELS",
        help=f"for --predictions or --features: {LABELS_HELP}",
    )
    add_class_names_argument(p)
    p.add_argument("--train-features", help="cross-experiment: experiment A features")
    p.add_argument("--train-labels", nargs="+", help="cross-experiment: experiment A labels")
    p.add_argument("--test-features", help="cross-experiment: experiment B features")
    p.add_argument("--test-labels", nargs="+", help="cross-experiment: experiment B labels")
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
    from hpcdiff.io.labels import describe_spec, read_labels
    from hpcdiff.io.outputs import ensure_writable, provenance, write_json
    from hpcdiff.io.predictions import read_predictions
    from hpcdiff.learn import (
        DiffuseClassifier,
        cross_experiment,
        evaluate,
        format_report,
        format_side_by_side,
        labelled_rows,
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
    names = class_names_arg(args, job)

    def spec(value: list[str]) -> Any:
        return value[0] if len(value) == 1 else value

    if mode == "predictions":
        preds = read_predictions(args.predictions)
        rows, labels = labelled_rows(preds, read_labels(spec(args.labels), class_names=names))
        target = str(preds.attrs.get("target", "binary"))
        y, class_names = targets(labels, target)
        labels_name = describe_spec(spec(args.labels))
        if tuple(class_names) != preds.class_names:
            raise ConfigError(
                f"{args.predictions} has classes {list(preds.class_names)} but {labels_name} "
                f"gives {list(class_names)} for target {target!r}"
            )
        report = report_from_predictions(y, preds.proba[rows], class_names=preds.class_names)
        out.update(predictions=args.predictions, labels=labels_name, report=report)
        print(
            format_report(
                report,
                title=f"{args.predictions} ({report['n']} labelled of {len(preds.indices)} frames)",
            )
        )
    elif mode == "model":
        import numpy as np

        model = DiffuseClassifier.load(args.model)
        fs = read_features(args.features)
        rows, labels = labelled_rows(fs, read_labels(spec(args.labels), class_names=names))
        y, _ = targets(labels, model.metadata_.get("target", "binary"))
        y_full = np.full(len(fs), -1, dtype=np.int64)
        y_full[rows] = y
        report = evaluate(model, fs, y_full, rows=rows, source=args.features)
        out.update(
            model=args.model,
            features=args.features,
            labels=describe_spec(spec(args.labels)),
            report=report,
        )
        print(
            format_report(report, title=f"{args.model} on {args.features} ({report['n']} frames)")
        )
    else:
        if args.model_out:
            ensure_writable(args.model_out, force=args.force)
        with Progress(3, label="evaluate", unit="steps", enabled=not args.quiet) as bar:
            fa = read_features(args.train_features)
            fb = read_features(args.test_features)
            rows_a, la = labelled_rows(fa, read_labels(spec(args.train_labels), class_names=names))
            rows_b, lb = labelled_rows(fb, read_labels(spec(args.test_labels), class_names=names))
            ya, names_a = targets(la, cfg.target)
            yb, names_b = targets(lb, cfg.target)
            if names_a != names_b:
                raise ConfigError(
                    f"class names differ: {describe_spec(spec(args.train_labels))} "
                    f"{list(names_a)} vs {describe_spec(spec(args.test_labels))} {list(names_b)}"
                )
            bar.update()
            try:
                reports, res_a = cross_experiment(
                    fa,
                    ya,
                    fb,
                    yb,
                    class_names=names_a,
                    cfg=cfg,
                    names=tuple(args.names),
                    train_rows=rows_a,
                    test_rows=rows_b,
                )
            except ValueError as exc:  # too few frames or classes for the split / PCA
                raise ConfigError(f"cannot train for cross-experiment evaluation: {exc}") from None
            bar.update()
            if args.model_out:
                res_a.model.save(args.model_out, force=args.force)
            bar.update()
        out.update(
            train_features=args.train_features,
            train_labels=describe_spec(spec(args.train_labels)),
            test_features=args.test_features,
            test_labels=describe_spec(spec(args.test_labels)),
            names=list(args.names),
            learn=dataclasses.asdict(cfg),
            reports=reports,
        )
        print(format_side_by_side(reports))
    from hpcdiff.learn.published import PUBLISHED

    out["published"] = PUBLISHED.as_dict()
    out["provenance"] = provenance(job.config_hash() if job is not None else None)
    if report_path is not None:
        write_json(report_path, out, force=args.force)
    print_summary(
        "hpcdiff evaluate: done",
        {"mode": mode, "report": report_path or "(not written; give --report)",
         "time": f"{time.perf_counter() - t0:.1f} s"},
    )  # fmt: skip
    return 0
