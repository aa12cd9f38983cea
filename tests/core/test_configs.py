"""Config argument parsing (validated values), the variants' phantoms and loss defaults, and
every RP3D-Diag config variant resolving to a buildable model."""

import jax
import pytest
from flax import nnx

from configs import auxol, radfm, rp3d_diag
from configs.common import parse_arg
from radjax.papers.rp3d_diag import model as paper


def test_parse_arg_types_flags_and_errors():
    a = parse_arg("tiny,fusion=early,steps=5", tiny=False, fusion="late", steps=1)
    assert a.tiny is True and a.fusion == "early" and a.steps == 5
    with pytest.raises(ValueError, match="unknown"):
        parse_arg("nonsense", tiny=False)
    with pytest.raises(ValueError, match="needs a value"):
        parse_arg("fusion", fusion="late")


def test_parse_arg_checks_values():
    choices = {"fusion": ("late", "early")}
    with pytest.raises(ValueError, match="fusion='erly' not allowed; choose one of late, early"):
        parse_arg("fusion=erly", choices=choices, fusion="late")
    assert parse_arg("fusion=early", choices=choices, fusion="late").fusion == "early"
    with pytest.raises(ValueError, match="ke='flase': not a boolean"):
        parse_arg("ke=flase", ke=False)
    with pytest.raises(ValueError, match="steps='abc': not a int"):
        parse_arg("steps=abc", steps=1)


@pytest.mark.parametrize(
    "module, arg, allowed",
    [
        (rp3d_diag, "tiny,fusion=erly", "late, early"),
        (rp3d_diag, "arch=v2", "released, v1"),
        (rp3d_diag, "label_level=icd", "articles, icd10s"),
        (radfm, "tiny,tasks=modality+captoin", "modality, vqa, caption"),
    ],
)
def test_config_arguments_are_validated_when_parsed(module, arg, allowed):
    with pytest.raises(ValueError, match=allowed):
        module.get_config(arg)


@pytest.mark.parametrize("module", [rp3d_diag, radfm])
def test_phantoms_only_in_tiny(module):
    assert module.get_config("tiny").data.phantoms.enabled
    assert not module.get_config().data.phantoms.enabled
    assert module.get_config().data.root != module.get_config("tiny").data.root


def test_radfm_loss_follows_the_released_code_and_the_paper_is_a_switch():
    weight = lambda arg: radfm.get_config(arg).loss.entity_weight  # noqa: E731
    assert weight(None) == 1.0 and weight("entity_weight=3") == 3.0
    assert weight("tiny") == 3.0 and weight("tiny,entity_weight=1") == 1.0


@pytest.mark.parametrize("tiny", ["", "tiny,"])
def test_auxol_follows_the_released_code_and_the_paper_is_a_switch(tiny):
    """AuxOL's ``paper`` reaches the learner and the stream (weighted BCE, loss-based queue,
    a point prompt's map once); without it the code's behaviour, with any other argument."""
    from radjax.papers.auxol import online

    code, paper_ = auxol.get_config(f"{tiny}prompt=point"), auxol.get_config(f"{tiny}paper")
    assert code.data == auxol.get_config(tiny.rstrip(",")).data == paper_.data
    released, described = online.learner_config(code), online.learner_config(paper_)
    assert (released.weighted_bce, released.queue_policy) == (False, "fifo")
    assert (described.weighted_bce, described.queue_policy) == (True, "loss")
    assert online.stream_config(code).point_counted_twice
    assert not online.stream_config(paper_).point_counted_twice


@pytest.mark.parametrize(
    "arg",
    [
        "tiny",
        "tiny,fusion=early",
        "tiny,arch=v1",
        "tiny,arch=v1,fusion=early",
        "tiny,label_level=icd10s",
    ],
)
def test_tiny_variants_build_abstractly(arg):
    config = rp3d_diag.get_config(arg)
    config.model.num_classes = 12
    model = nnx.eval_shape(lambda: paper.build_model(config, rngs=nnx.Rngs(0)))
    assert jax.tree.leaves(nnx.state(model, nnx.Param))


def test_paper_config_is_the_released_size():
    config = rp3d_diag.get_config()
    assert config.model.resnet.layers == (3, 4, 6, 3) and config.model.resnet.width == 64
    assert (config.data.image_size, config.data.depth) == (256, 32)
    assert config.optim.lr == 1e-5 and config.eval.head_cut == 85
    assert rp3d_diag.get_config("label_level=icd10s").eval.medium_cut == 395
