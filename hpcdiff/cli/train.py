"""``hpcdiff train``: features file + labels -> model file, report JSON and printed table.

Flags override the job file; without a job file the ``[learn]`` defaults apply (PCA 50,
500 train / 500 test, binary target).  With ``--job``, inputs and outputs default to
``<output.dir>/features.h5``, ``[experiment] labels``, ``[output] model`` (or
``<output.dir>/model.npz``) and ``<model>.report.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from hpcdiff.config import JobConfig, LearnConfig, load_job
from hpcdiff.errors import ConfigError


# ----------------------------------------------------------------- shared by train/predict/evaluate
def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def add_job_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job", metavar="JOB.toml", help="job file giving defaults for every path")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_learn_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("learning (default: the job's [learn] section)")
    g.add_argument(
        "--target", choices=["binary", "classes"], help="diffuse 0/1, or ordered classes"
    )
    g.add_argument("--n-components", type=positive_int, help="PCA dimension (method: 50)")
    g.add_argument("--n-train", type=positive_int, help="training frames (method: 500)")
    g.add_argument("--n-test", type=non_negative_int, help="test frames (method: 500)")
    g.add_argument("--random-state", type=int, help="seed of the split and the fits")
    g.add_argument("--C", type=positive_float, dest="C", help="inverse regularisation strength")
    g.add_argument("--pca-from", choices=["gather", "statistics"], help="PCA by SVD or from Gram")
    g.add_argument(
        "--split",
        choices=["stratified", "order"],
        help="stratified at random, or by order (first n_train / last n_test labelled frames)",
    )
    g.add_argument(
        "--standardise",
        choices=["none", "scores"],
        help="per-experiment standardisation of the PCA scores (transfer to new experiments)",
    )
    g.add_argument(
        "--recalibrate",
        choices=["auto", "none", "em", "mixture", "mixture_wide"],
        help="probability scale from each experiment's own unlabelled scores at predict",
    )


LABELS_HELP = (
    "labels: hpcdiff's HDF5 labels file, a CSV (file,index,label), or CrystFEL list files "
    "one per class (class from the file name, or CLASS=PATH)"
)


def add_class_names_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--class-names",
        type=lambda t: tuple(x.strip() for x in t.split(",") if x.strip()),
        metavar="A,B,...",
        help="the label classes, class 0 (no diffuse scattering) first "
        "(default: [experiment] class_names, the file's own, or non-diffuse,diffuse)",
    )


def labels_spec(value: Any, job: JobConfig | None, *, flag: str = "--labels") -> Any:
    """The labels a command reads: ``--labels`` (one or more paths), else the job's."""
    chosen = value if value else (job.experiment.labels if job is not None else None)
    if chosen is None:
        raise ConfigError(f"no labels: give {flag} (or --job with [experiment] labels)")
    if isinstance(chosen, list | tuple) and len(chosen) == 1:
        return chosen[0]
    return chosen


def class_names_arg(args: argparse.Namespace, job: JobConfig | None) -> tuple[str, ...] | None:
    """``--class-names``, else ``[experiment] class_names``, else ``None`` (the file's own)."""
    given = getattr(args, "class_names", None)
    if given:
        return tuple(given)
    if job is not None and job.experiment.class_names:
        return tuple(job.experiment.class_names)
    return None


def load_job_arg(args: argparse.Namespace) -> JobConfig | None:
    return load_job(args.job, check_files=False) if getattr(args, "job", None) else None


def learn_config(args: argparse.Namespace, job: JobConfig | None) -> LearnConfig:
    """The job's ``[learn]`` section (or defaults) with command-line overrides."""
    cfg = job.learn if job is not None else LearnConfig()
    changes: dict[str, Any] = {}
    names = (
        "target",
        "n_components",
        "n_train",
        "n_test",
        "random_state",
        "C",
        "pca_from",
        "split",
        "standardise",
        "recalibrate",
    )
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    try:
        return dataclasses.replace(cfg, **changes)
    except ValueError as exc:
        raise ConfigError(f"cannot train on these [learn] settings: {exc}") from None


def output_dir(job: JobConfig | None) -> Path:
    return Path(job.output.dir) if job is not None else Path.cwd()


def default_features(job: JobConfig | None) -> Path | None:
    from hpcdiff.pipelines.layout import ClassifyLayout

    return ClassifyLayout.from_job(job).features if job is not None else None


def default_model(job: JobConfig | None) -> Path | None:
    from hpcdiff.pipelines.layout import ClassifyLayout

    return ClassifyLayout.from_job(job).model if job is not None else None


def pick(value: Any, default: Any, *, flag: str, what: str) -> Any:
    """A path from a flag, else from the job; a ConfigError naming the flag when neither."""
    chosen = value if value is not None else default
    if chosen is None:
        raise ConfigError(f"no {what}: give {flag} (or --job with the corresponding entry)")
    return Path(chosen)


def report_path_for(model: Path) -> Path:
    from hpcdiff.pipelines.layout import report_beside

    return report_beside(model)


# ----------------------------------------------------------------- train
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fit PCA + logistic regression on a features file and labels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--features", help="features file (HDF5, from `hpcdiff features`)")
    p.add_argument("--labels", nargs="+", metavar="LABELS", help=LABELS_HELP)
    add_class_names_argument(p)
    p.add_argument("--model", help="model file to write (.npz)")
    p.add_argument("--report", help="report JSON to write (default: <model>.report.json)")
    add_job_argument(p)
    add_learn_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hpcdiff.io.featurefile import read_features
    from hpcdiff.io.labels import describe_spec, read_labels
    from hpcdiff.io.outputs import ensure_writable, write_json
    from hpcdiff.learn import format_report, labelled_rows, targets, train
    from hpcdiff.learn.published import PUBLISHED
    from hpcdiff.progress import Progress, print_summary

    job = load_job_arg(args)
    cfg = learn_config(args, job)
    features_path = pick(
        args.features, default_features(job), flag="--features", what="features file"
    )
    labels_spec_ = labels_spec(args.labels, job)
    labels_path = describe_spec(labels_spec_)
    model_path = pick(args.model, default_model(job), flag="--model", what="model output")
    report_path = Path(args.report) if args.report else report_path_for(model_path)
    ensure_writable(model_path, force=args.force)
    ensure_writable(report_path, force=args.force)

    t0 = time.perf_counter()
    steps = ["read features", "align labels", "split + fit", "save"]
    with Progress(len(steps), label="train", unit="steps", enabled=not args.quiet) as bar:
        fs = read_features(features_path)
        bar.update()
        rows, labels = labelled_rows(
            fs, read_labels(labels_spec_, class_names=class_names_arg(args, job))
        )
        y, class_names = targets(labels, cfg.target)
        bar.update()
        config_hash = job.config_hash() if job is not None else None
        try:
            result = train(
                fs,
                y,
                class_names=class_names,
                cfg=cfg,
                config_hash=config_hash,
                extra={"features_file": str(features_path), "labels_file": str(labels_path)},
                rows=rows,
            )
        except ValueError as exc:  # too few frames or classes for the requested split / PCA
            raise ConfigError(
                f"cannot train on {features_path} with {labels_path}: {exc}"
            ) from None
        bar.update()
        result.model.save(model_path, force=args.force)
        report = {
            "kind": "train",
            "features": str(features_path),
            "labels": str(labels_path),
            "model": str(model_path),
            "learn": dataclasses.asdict(cfg),
            "n_train": int(result.train_rows.size),
            "n_test": int(result.test_rows.size),
            "n_labelled": int(rows.size),
            "n_frames": len(fs),
            "test": result.report,
            "published": PUBLISHED.as_dict(),
            "feature": result.model.metadata_["feature"],
            "provenance": {
                k: result.model.metadata_.get(k)
                for k in ("hpcdiff_version", "config_hash", "created_utc")
            },
        }
        write_json(report_path, report, force=args.force)
        bar.update()
    if result.report is not None:
        print(
            format_report(
                result.report, title=f"held-out test set ({result.test_rows.size} frames)"
            )
        )
    w = fs.meta.weights
    print_summary(
        "hpcdiff train: done",
        {
            "frames": len(fs),
            "labelled": f"{rows.size} ({len(fs) - rows.size} without a label, not used)",
            "train / test": f"{result.train_rows.size} / {result.test_rows.size} ({cfg.split})",
            "features": f"{fs.meta.layer} ({fs.meta.n_features}), weights {w.get('name')}"
            + ("" if w.get("pretrained") else " [NOT pretrained]"),
            "PCA": f"{cfg.n_components} components ({cfg.pca_from}), "
            f"{result.model.pca_.explained_variance_ratio_.sum():.1%} of variance",
            "model": model_path,
            "report": report_path,
            "time": f"{time.perf_counter() - t0:.1f} s",
        },
    )
    return 0
