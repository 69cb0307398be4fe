"""``hpcdiff predict``: features file + model -> predictions HDF5 (one row per frame).

Beside the predictions file it writes a CSV (file, index, class, probability, diffuse
score) and ``diffuse.lst``, a CrystFEL list of the frames predicted diffuse (one list per
class as well with more than two classes); see :mod:`hpcdiff.io.prediction_lists`.

The model refuses features made another way (layer, weights, background settings).  Rows
are processed in batches with a progress bar; the output appears only when complete.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from hpcdiff.cli.train import add_job_argument, default_features, default_model, load_job_arg, pick

if TYPE_CHECKING:
    import numpy as np

    from hpcdiff.config import JobConfig
    from hpcdiff.learn import DiffuseClassifier


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="apply a trained model to a features file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--features", help="features file (HDF5)")
    p.add_argument("--model", help="model file (.npz from `hpcdiff train`)")
    p.add_argument("--out", help="predictions file to write (default: <features>.predictions.h5)")
    p.add_argument("--batch-rows", type=int, default=4096, help="frames per batch (default 4096)")
    p.add_argument(
        "--target-labels",
        help="labels of some frames of THIS experiment: a Platt map fitted on them (at most "
        "[learn] n_target_labels of them, stratified) sets the probability scale",
    )
    p.add_argument(
        "--recalibrate",
        choices=("none", "em", "mixture"),
        help="recalibration from this experiment's unlabelled scores (default: the model's)",
    )
    add_job_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import h5py
    import numpy as np

    from hpcdiff.io.featurefile import iter_feature_batches, read_feature_meta
    from hpcdiff.io.outputs import ensure_writable, sha256_file
    from hpcdiff.io.prediction_lists import prediction_outputs, write_prediction_outputs_from_file
    from hpcdiff.io.predictions import PredictionWriter
    from hpcdiff.learn import DiffuseClassifier
    from hpcdiff.pipelines.layout import predictions_beside
    from hpcdiff.progress import Progress, print_summary

    job = load_job_arg(args)
    features_path = pick(
        args.features, default_features(job), flag="--features", what="features file"
    )
    model_path = pick(args.model, default_model(job), flag="--model", what="model file")
    out = Path(args.out) if args.out else predictions_beside(features_path)
    ensure_writable(out, force=args.force)

    t0 = time.perf_counter()
    model = DiffuseClassifier.load(model_path)
    for extra in prediction_outputs(out, model.class_names_).values():
        ensure_writable(extra, force=args.force)
    meta = read_feature_meta(features_path)
    model.check_compatible(meta, source=features_path)
    with h5py.File(features_path, "r") as h5:
        n = int(h5["features"].shape[0])
    counts = np.zeros(len(model.class_names_), dtype=np.int64)
    attrs = {
        "target": model.metadata_.get("target", "binary"),
        "model": str(model_path),
        "model_sha256": sha256_file(model_path),
        "model_metadata": model.metadata_,
        "features": str(features_path),
    }
    config_hash = job.config_hash() if job is not None else model.metadata_.get("config_hash")
    with (
        PredictionWriter(
            out,
            class_names=model.class_names_,
            attrs=attrs,
            config_hash=config_hash,
            force=args.force,
        ) as writer,
        Progress(n, label="predict", unit="frames", enabled=not args.quiet) as bar,
    ):
        adapted = _adapted_proba(model, features_path, args, job)
        start = 0
        for files, indices, x in iter_feature_batches(features_path, batch_rows=args.batch_rows):
            if adapted is None:
                proba = model.predict_proba(x)
            else:
                proba = adapted[start : start + x.shape[0]]
            start += x.shape[0]
            writer.append(files, indices, proba)
            counts += np.bincount(np.argmax(proba, axis=1), minlength=counts.size)
            bar.update(x.shape[0])
    lists = write_prediction_outputs_from_file(out, force=args.force)
    print_summary(
        "hpcdiff predict: done",
        {
            "frames": n,
            **{
                f"predicted {name}": int(c)
                for name, c in zip(model.class_names_, counts, strict=True)
            },
            "model": model_path,
            "predictions": out,
            "CSV": lists["predictions_csv"],
            "CrystFEL list of diffuse frames": lists["diffuse_list"],
            "time": f"{time.perf_counter() - t0:.1f} s",
        },
    )
    return 0


def _adapted_proba(
    model: DiffuseClassifier, features_path: Path, args: argparse.Namespace, job: JobConfig | None
) -> np.ndarray | None:
    """Whole-experiment probabilities when the model or the flags adapt to this experiment
    (:mod:`hpcdiff.learn.transfer`); ``None`` for the plain per-batch path."""
    from hpcdiff.io.featurefile import iter_feature_batches, read_features
    from hpcdiff.io.labels import read_labels
    from hpcdiff.learn.transfer import choose_target_rows, needs_experiment, predict_batches
    from hpcdiff.learn.workflow import targets

    if not (needs_experiment(model) or args.target_labels or args.recalibrate):
        return None
    labelled = None
    if args.target_labels:
        ids = read_features(features_path).frame_ids
        labels = read_labels(args.target_labels)
        positions, found = labels.for_run(ids)
        y, _ = targets(found, "binary")
        n = job.learn.n_target_labels if job is not None else 0
        random_state = job.learn.random_state if job is not None else 0
        labelled = choose_target_rows(positions, y, n=n, random_state=random_state)

    def batches() -> Iterator[np.ndarray]:
        for _, _, x in iter_feature_batches(features_path, batch_rows=args.batch_rows):
            yield x

    return predict_batches(model, batches, recalibrate=args.recalibrate, labelled=labelled)
