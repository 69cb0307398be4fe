"""PCA + logistic regression of VGG16 features: statistics, model files, metrics, workflow.

Nothing here imports torch; scikit-learn is imported when a model is fitted or scored.
"""

from __future__ import annotations

from hpcdiff.learn.metrics import (
    BINARY_CLASS_NAMES,
    classification_report,
    format_report,
    format_side_by_side,
)
from hpcdiff.learn.model import DiffuseClassifier, ModelMismatchError
from hpcdiff.learn.pca_stats import (
    PCABasis,
    PCAReduction,
    PCAStatistics,
    pca_from_array,
    pca_from_statistics,
)
from hpcdiff.learn.split import (
    order_split,
    split_rows,
    split_sizes,
    stratified_split,
    too_few_labelled,
)
from hpcdiff.learn.workflow import (
    TrainResult,
    align_labels,
    cross_experiment,
    evaluate,
    fit_model,
    labelled_rows,
    report_from_predictions,
    targets,
    train,
)

__all__ = [
    "BINARY_CLASS_NAMES",
    "DiffuseClassifier",
    "ModelMismatchError",
    "PCABasis",
    "PCAReduction",
    "PCAStatistics",
    "TrainResult",
    "align_labels",
    "labelled_rows",
    "classification_report",
    "cross_experiment",
    "evaluate",
    "fit_model",
    "format_report",
    "format_side_by_side",
    "pca_from_array",
    "pca_from_statistics",
    "report_from_predictions",
    "order_split",
    "split_rows",
    "split_sizes",
    "stratified_split",
    "targets",
    "too_few_labelled",
    "train",
]
