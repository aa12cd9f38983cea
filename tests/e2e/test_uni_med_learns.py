"""The tiny Uni-Med config learns the Uni-Med phantoms through the real launcher: trained with
hard routing on SLAKE-style VQA and MedMNIST-style classification (one dataset per batch, as
the original), evaluated on held-out phantoms with the original eval prompts, it beats the
most-frequent-answer baseline on open VQA (modality, lesion position) and on classification,
and every task went to its own expert. REC needs ~1000 steps to beat the centre box (the demo
trains all five tasks with the soft router; radjax/papers/uni_med/README.md has the numbers)."""

import json

import pytest

from tests.e2e.launcher import run_launcher, train_losses

STEPS = 300


@pytest.mark.slow
def test_uni_med_train_then_evaluate(tmp_path, tiny_data):
    workdir = tmp_path / "run"
    run_launcher(
        "experiments.train",
        workdir,
        f"--config.data.root={tiny_data('uni_med')}",
        f"--config.train.steps={STEPS}",
        f"--config.train.eval_every={STEPS}",
        "--config.eval.max_new_tokens=12",  # the longest VQA / cls answer: 7 tokens
        "--config.data.max_length=128",  # the longest VQA / cls prompt + answer: 119 tokens
        config="configs/uni_med.py:tiny,router=hard,tasks=vqa+cls",
    )
    with open(workdir / "eval" / f"{STEPS}.json") as f:
        trained = json.load(f)
    assert not any(k.startswith(("refer/", "identify/", "caption/")) for k in trained)  # tasks=
    # hard routing: task i -> expert i, exactly (vqa 0, cls 4)
    assert trained["vqa/routing_e0"] == 1.0 and trained["cls/routing_e4"] == 1.0
    assert trained["vqa/routing_e4"] == 0.0 and trained["cls/routing_e0"] == 0.0
    # VQA: the modality and the lesion position read from the image
    assert trained["vqa/open_f1"] > trained["baseline/vqa/open_f1"] + 0.3, trained
    # classification (MedMNIST-style body section) read from the image
    assert trained["cls/accuracy"] > trained["baseline/cls/accuracy"] + 0.4, trained
    losses = train_losses(workdir)
    assert losses[-1] < 0.2 * losses[0]
