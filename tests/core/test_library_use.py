"""radjax as a library: configs by name (``radjax.registry.get_config``), shipped in the wheel,
the README's config -> model -> weights path, and the error for an incomplete config."""

import ast
import importlib
import pathlib
import re
import tomllib

import numpy as np
import pytest
import setuptools
from flax import nnx

from configs import radfm as radfm_config
from radjax import registry
from radjax.convert.torch_io import assign
from radjax.train import experiment

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_wheel_ships_every_config():
    """setuptools' package list from pyproject.toml holds ``configs`` next to ``radjax``."""
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = setuptools.find_packages(str(ROOT), **find["packages"]["find"])
    assert "radjax" in packages and "configs" in packages, sorted(packages)[:8]
    assert {"radfm", "rp3d_diag"} <= set(registry.config_names())


def test_configs_by_name_and_their_errors():
    assert registry.get_config("radfm:tiny").to_dict() == radfm_config.get_config("tiny").to_dict()
    assert registry.get_config("rp3d_diag", "tiny,fusion=early").model.fusion == "early"
    assert registry.config_file("radfm") == str(ROOT / "configs" / "radfm.py")
    with pytest.raises(ValueError, match=r"no config configs/m3d.py; configs exist for .*radfm"):
        registry.get_config("m3d")
    with pytest.raises(ValueError, match="give the argument once"):
        registry.get_config("radfm:tiny", "tiny")


def test_readme_library_example_names_what_exists():
    """Every ``radjax`` name and config the README's library example uses resolves."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Use radjax as a library") :]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.startswith("radjax"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.import_module(
                    f"{node.module}.{alias.name}"
                ), (node.module, alias.name)
    names = re.findall(r"registry\.(\w+)\(", code)
    assert names and all(hasattr(registry, n) for n in names), names
    for name in re.findall(r'registry\.get_config\("([^"]+)"\)', code):
        registry.get_config(name)
    paper = registry.module("radfm", "model")
    assert callable(paper.build_model) and callable(paper.pretrained_params)


def test_an_incomplete_config_is_refused_then_prepared_built_and_loaded(tmp_path, transformers):
    """The README path on the tiny RadFM: build before ``prepare_config`` names the field;
    after it the model has the tokenizer's vocabulary and takes converted LLaMA weights."""
    config = registry.get_config("radfm:tiny")
    paper = registry.module(config.paper, "model")
    with pytest.raises(ValueError, match=r"model\.llm\.vocab_size is 0.*prepare_config"):
        paper.build_model(config, rngs=nnx.Rngs(0))
    config.data.root = str(tmp_path / "data")
    config.data.phantoms.num_train, config.data.phantoms.num_test = 8, 4
    experiment.prepare_config(config)
    m = config.model.llm
    assert m.vocab_size > 0
    hf = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=m.vocab_size,
            hidden_size=m.hidden_size,
            intermediate_size=m.intermediate_size,
            num_hidden_layers=m.num_layers,
            num_attention_heads=m.num_heads,
            rms_norm_eps=m.rms_norm_eps,
            max_position_embeddings=m.max_position_embeddings,
            tie_word_embeddings=False,
        )
    )
    hf.save_pretrained(tmp_path / "llama")
    config.model.llm_dir = str(tmp_path / "llama")
    model = nnx.eval_shape(lambda: paper.build_model(config, rngs=nnx.Rngs(0)))
    assign(model, paper.pretrained_params(config), strict=False)
    np.testing.assert_array_equal(
        model.lang_model.embed_tokens[...], hf.model.embed_tokens.weight.detach().numpy()
    )
