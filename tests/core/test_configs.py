"""Config argument parsing and every RP3D-Diag config variant resolving to a buildable model."""

import jax
import pytest
from flax import nnx

from configs import rp3d_diag
from configs.common import parse_arg
from radjax.papers.rp3d_diag import model as paper


def test_parse_arg_types_flags_and_errors():
    a = parse_arg("tiny,fusion=early,steps=5", tiny=False, fusion="late", steps=1)
    assert a.tiny is True and a.fusion == "early" and a.steps == 5
    with pytest.raises(ValueError, match="unknown"):
        parse_arg("nonsense", tiny=False)
    with pytest.raises(ValueError, match="needs a value"):
        parse_arg("fusion", fusion="late")


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
