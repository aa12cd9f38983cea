"""The tiny RadFM config learns the RadFM phantoms through the real launchers: evaluated on
held-out phantoms it beats the untrained model and the most-frequent-answer baseline."""

import pytest

from tests.e2e.launcher import train_and_evaluate_untrained, train_losses


@pytest.mark.slow
def test_radfm_train_then_evaluate(tmp_path, tiny_data):
    radfm_data = tiny_data("radfm")
    workdir, trained, untrained = train_and_evaluate_untrained(
        tmp_path, radfm_data, "configs/radfm.py:tiny"
    )
    assert trained["num_examples"] == untrained["num_examples"] > 0
    assert trained["modality/accuracy"] >= 0.9, trained
    assert trained["modality/accuracy"] > trained["baseline/modality/accuracy"] + 0.2
    assert trained["caption/bertscore_f1"] > untrained["caption/bertscore_f1"] + 0.1
    for metric in ("caption/bleu4", "caption/entity_recall"):
        assert trained[metric] > untrained[metric] + 0.1, (metric, trained, untrained)
        assert trained[metric] > trained[f"baseline/{metric}"] + 0.05, (metric, trained)
    losses = train_losses(workdir)
    assert losses[-1] < 0.5 * losses[0]
