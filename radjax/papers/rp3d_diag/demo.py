"""What ``experiments.demo`` trains for RP3D-Diag and which metrics it shows (the eval's
``roc/...`` curves give the head / medium / tail ROC figure)."""

_METRICS = ("auc", "ap", "f1", "mcc", "recall@fpr0.1")
_SPLITS = ("all", "head", "medium", "tail")

SECTIONS = (
    dict(name="rp3d_diag_late", arg="tiny", metrics=_METRICS, splits=_SPLITS),
    dict(name="rp3d_diag_early", arg="tiny,fusion=early", metrics=_METRICS, splits=_SPLITS),
    dict(name="rp3d_diag_late_ke", arg="tiny,ke", metrics=_METRICS, splits=_SPLITS),
)
