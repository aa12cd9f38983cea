"""What ``experiments.demo`` trains for RadFM: per-task metrics against the most-frequent-answer
baseline, and generated captions / VQA answers next to their references."""

SECTIONS = (
    dict(
        name="radfm",
        arg="tiny",
        metrics=(
            "accuracy",
            "macro_f1",
            "bleu1",
            "bleu4",
            "rougeL_f",
            "entity_precision",
            "entity_recall",
            "bertscore_f1",
        ),
        splits=("modality", "diagnosis_closed", "diagnosis_open", "vqa", "caption", "rationale"),
        baseline=True,
        samples=("caption", "vqa"),
    ),
)
