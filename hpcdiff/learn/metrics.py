"""Classification reports as the method printed them: precision, recall, F1 per class.

A report is a plain JSON-ready dict (see :func:`classification_report`), printed with
:func:`format_report`; several reports side by side (within- and cross-experiment) with
:func:`format_side_by_side`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hpcdiff.learn.calibration import calibration_summary

#: Class names of the binary target, in label order (0, 1).
BINARY_CLASS_NAMES: tuple[str, str] = ("non-diffuse", "diffuse")


def classification_report(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray | None,
    *,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support; accuracy; confusion matrix; ROC AUC.

    Parameters
    ----------
    y_true, y_pred
        ``(n,)`` integer class labels in ``range(len(class_names))``.
    proba
        ``(n, n_classes)`` class probabilities, or ``None`` (then no ROC AUC).
    class_names
        Name of each class label, in label order (binary: ``("non-diffuse", "diffuse")``).

    Returns
    -------
    dict
        ``{"n": int, "class_names": [names in label order], "accuracy": float, "classes": {name: {"precision", "recall", "f1",
        "support"}}, "macro_f1": float, "confusion_matrix": {"labels": [names],
        "matrix": [[...]]}`` (rows true, columns predicted), ``"roc_auc": float | None,
        "roc_auc_note": str}``.  Binary ROC AUC scores the last class (diffuse) against the rest;
        more classes give the macro one-vs-rest AUC.  ``None`` (with a note) when a class is
        missing from ``y_true``.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(
            f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal 1-D shapes"
        )
    k = len(class_names)
    labels = list(range(k))
    bad = sorted(set(np.unique(np.concatenate([y_true, y_pred])).tolist()) - set(labels))
    if bad:
        raise ValueError(f"labels {bad} outside range({k}) of class_names {list(class_names)}")
    prec, rec, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    report: dict[str, Any] = {
        "n": int(y_true.size),
        "class_names": list(class_names),
        "accuracy": float(np.mean(y_true == y_pred)) if y_true.size else float("nan"),
        "classes": {
            name: {
                "precision": float(prec[i]),
                "recall": float(rec[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "macro_f1": float(np.mean(f1)),
        "confusion_matrix": {
            "labels": list(class_names),
            "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        },
        "roc_auc": None,
        "roc_auc_note": "",
    }
    present = np.unique(y_true)
    if proba is None:
        report["roc_auc_note"] = "no probabilities given"
    elif present.size < k:
        missing = [class_names[i] for i in labels if i not in present]
        report["roc_auc_note"] = f"undefined: no true examples of {missing}"
    else:
        proba = np.asarray(proba, dtype=np.float64)
        if proba.shape != (y_true.size, k):
            raise ValueError(f"proba must have shape ({y_true.size}, {k}); got {proba.shape}")
        if k == 2:
            report["roc_auc"] = float(roc_auc_score(y_true == 1, proba[:, 1]))
            report["roc_auc_note"] = f"{class_names[1]} vs {class_names[0]}"
            report["calibration"] = calibration_summary(y_true, proba[:, 1])
        else:
            p = proba / proba.sum(axis=1, keepdims=True)
            report["roc_auc"] = float(roc_auc_score(y_true, p, multi_class="ovr", labels=labels))
            report["roc_auc_note"] = "macro one-vs-rest"
    return report


def _fmt(x: Any, width: int = 9) -> str:
    if x is None:
        return f"{'-':>{width}}"
    if isinstance(x, float):
        return f"{x:>{width}.3f}"
    return f"{x:>{width}}"


def format_report(
    report: Mapping[str, Any], *, title: str | None = None, published: bool = True
) -> str:
    """The report as a text table (per-class precision/recall/F1/support, then totals).

    With ``published`` (default), the method's published precision / recall and accuracy
    (:data:`hpcdiff.learn.published.PUBLISHED`) stand in two columns beside this run's, for
    the classes the paper scored, and a last line says where they come from.
    """
    from hpcdiff.learn.published import PUBLISHED

    names = list(report.get("class_names", report["classes"]))
    width = max(12, *(len(n) for n in names))
    show = published and any(PUBLISHED.precision_recall(n) for n in names)
    paper_head = f"   {'paper P':>8} {'paper R':>8}" if show else ""
    lines = [title] if title else []
    lines.append(
        f"{'':<{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}{paper_head}"
    )
    for name in names:
        c = report["classes"][name]
        pr = PUBLISHED.precision_recall(name) if show else None
        paper = f"   {pr[0]:>8.2f} {pr[1]:>8.2f}" if pr else ""
        lines.append(
            f"{name:<{width}} {_fmt(c['precision'])} {_fmt(c['recall'])} {_fmt(c['f1'])} "
            f"{_fmt(c['support'])}{paper}"
        )
    lines.append("")
    paper_acc = f"   {'accuracy':>8} {PUBLISHED.accuracy:>8.2f}" if show else ""
    lines.append(
        f"{'accuracy':<{width}} {'':>9} {'':>9} {_fmt(report['accuracy'])} {report['n']:>9}"
        f"{paper_acc}"
    )
    lines.append(f"{'macro f1':<{width}} {'':>9} {'':>9} {_fmt(report['macro_f1'])}")
    auc = report.get("roc_auc")
    note = report.get("roc_auc_note", "")
    lines.append(f"{'ROC AUC':<{width}} {'':>9} {'':>9} {_fmt(auc)}  {note}")
    cal = report.get("calibration")
    if cal:
        lines.append(f"{'Brier score':<{width}} {'':>9} {'':>9} {_fmt(cal['brier'])}")
        lines.append(f"{'ECE':<{width}} {'':>9} {'':>9} {_fmt(cal['ece'])}  "
                     f"({cal['n_bins']} bins)")  # fmt: skip
        rel = cal["reliability"]
        cells = [
            f"{lo:.1f}-{hi:.1f}: {'-' if f is None else f'{f:.2f}'} (n={c})"
            for lo, hi, f, c in zip(rel["edges"][:-1], rel["edges"][1:],
                                    rel["fraction_positive"], rel["count"], strict=True)
            if c
        ]  # fmt: skip
        lines.append("reliability (P(diffuse) bin: fraction diffuse): " + "; ".join(cells))
    cm = report["confusion_matrix"]
    lines.append("")
    lines.append("confusion matrix (rows true, columns predicted):")
    cw = max(9, *(len(n) for n in cm["labels"]))
    lines.append(f"{'':<{width}} " + " ".join(f"{n:>{cw}}" for n in cm["labels"]))
    for name, row in zip(cm["labels"], cm["matrix"], strict=True):
        lines.append(f"{name:<{width}} " + " ".join(f"{v:>{cw}}" for v in row))
    if published:
        lines.append("")
        lines.append(PUBLISHED.note() if show else f"(for the binary task) {PUBLISHED.note()}")
    return "\n".join(lines)


def format_side_by_side(reports: Mapping[str, Mapping[str, Any]], *, published: bool = True) -> str:
    """Several reports (e.g. within- and cross-experiment) as one table, one column block each.

    Rows: precision / recall / F1 of each class, accuracy, ROC AUC, n.  With ``published``,
    a last column ``paper`` holds the method's published figures where it gave them.
    """
    from hpcdiff.learn.published import PUBLISHED

    paper: dict[str, Mapping[str, Any]] = {}
    if published:
        paper = {
            "paper": {
                "classes": {
                    n: {"precision": p, "recall": r} for n, (p, r) in PUBLISHED.classes.items()
                },
                "accuracy": PUBLISHED.accuracy,
                "n": PUBLISHED.n_test,
            }
        }
        reports = {**reports, **paper}
    names: list[str] = []
    for rep in reports.values():
        for n in rep.get("class_names", rep["classes"]):
            if n not in names:
                names.append(n)
    cols = list(reports)
    cw = max(10, *(len(c) for c in cols))
    rw = max(24, *(len(n) + 11 for n in names))
    lines = [f"{'':<{rw}} " + " ".join(f"{c:>{cw}}" for c in cols)]

    def row(label: str, get: Any) -> None:
        vals = []
        for c in cols:
            v = get(reports[c])
            vals.append(
                f"{'-':>{cw}}"
                if v is None
                else (f"{v:>{cw}.3f}" if isinstance(v, float) else f"{v:>{cw}}")
            )
        lines.append(f"{label:<{rw}} " + " ".join(vals))

    for n in names:
        for metric in ("precision", "recall", "f1"):
            row(f"{n} {metric}", lambda r, n=n, m=metric: r["classes"].get(n, {}).get(m))
    row("accuracy", lambda r: r["accuracy"])
    row("ROC AUC", lambda r: r.get("roc_auc"))
    row("Brier score", lambda r: (r.get("calibration") or {}).get("brier"))
    row("ECE", lambda r: (r.get("calibration") or {}).get("ece"))
    row("n", lambda r: r["n"])
    if paper:
        lines.append(PUBLISHED.note())
    return "\n".join(lines)
