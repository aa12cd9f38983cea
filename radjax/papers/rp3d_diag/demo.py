"""What ``experiments.demo`` trains for RP3D-Diag and which metrics it shows (the eval's
``roc/...`` curves give the head / medium / tail ROC figure): late fusion, the released
default, and late fusion with knowledge enhancement. Early fusion (``tiny,fusion=early``,
1.2-1.5 min more) is left to ``experiments.train`` to keep ``make demo`` under 15 minutes."""

_METRICS = ("auc", "ap", "f1", "mcc", "recall@fpr0.1")
_SPLITS = ("all", "head", "medium", "tail")

SECTIONS = (
    dict(name="rp3d_diag_late", arg="tiny", metrics=_METRICS, splits=_SPLITS, minutes=1.4),
    # KE starts from the late-fusion run's trunk (the tiny stand-in for the original's
    # ImageNet-pretrained ResNet-50; configs/rp3d_diag.py _tiny)
    dict(
        name="rp3d_diag_late_ke",
        minutes=1.0,  # one core, a full demo run, 2026-12-02 (matmul probe 182 GFLOP/s); late: 1.4
        arg="tiny,ke",
        stages=(("rp3d_diag_late", "tiny"),),
        metrics=_METRICS,
        splits=_SPLITS,
    ),
)
