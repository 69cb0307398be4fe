"""What good looks like: the method's published classification figures.

The method (VGG16 fc6+fc7 features, PCA to 50 dimensions, logistic regression) reported,
on 500 training and 500 held-out test frames of the LCLS experiment cxiclp9515 (CSPAD
detector), an accuracy of 92 %, precision / recall 95 % / 90 % for diffuse frames and
89 % / 95 % for non-diffuse frames.  Every precision/recall table hpcdiff prints or
writes shows these beside the run's own numbers (:func:`hpcdiff.learn.format_report`),
so that a user can judge a run at a glance.  This module is the one place that holds
them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PublishedFigures:
    """Published scores of the method on one data set.

    Attributes
    ----------
    accuracy
        Fraction of test frames classified right.
    classes
        ``{class name: (precision, recall)}``, fractions.
    n_train, n_test
        Frames used to train and to test.
    data
        The data set and detector.
    """

    accuracy: float
    classes: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    n_train: int = 500
    n_test: int = 500
    data: str = "LCLS cxiclp9515, CSPAD"

    def precision_recall(self, class_name: str) -> tuple[float, float] | None:
        """``(precision, recall)`` published for ``class_name``, or ``None``."""
        return self.classes.get(class_name)

    def note(self) -> str:
        """One line naming the figures and where they come from."""
        per_class = "; ".join(
            f"{name} precision {p:.0%} / recall {r:.0%}" for name, (p, r) in self.classes.items()
        )
        return (
            f"published (method paper, {self.n_train} train / {self.n_test} test frames, "
            f"{self.data}): accuracy {self.accuracy:.0%}; {per_class}"
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain form for JSON reports."""
        return {
            "accuracy": self.accuracy,
            "classes": {k: {"precision": p, "recall": r} for k, (p, r) in self.classes.items()},
            "n_train": self.n_train,
            "n_test": self.n_test,
            "data": self.data,
        }


#: The method's figures (binary target: ``non-diffuse`` / ``diffuse``).
PUBLISHED = PublishedFigures(
    accuracy=0.92,
    classes={"diffuse": (0.95, 0.90), "non-diffuse": (0.89, 0.95)},
)
