"""Every training format's ``batch_spec(config)``: the abstract batch equals the pipeline's
first real batch on phantoms (field for field, shape and dtype), and the released configs get
one without any data on disk (``radjax.train.compiled_memory.abstract_batch``)."""

import jax
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401
from radjax.data import pipeline
from radjax.registry import get_config
from radjax.train import compiled_memory, experiment

# phantom counts per paper, smaller than the tiny runs': the batch shapes do not depend on them
FEW = {
    "rp3d_diag": dict(num_train=40, num_test=8),
    "radfm": dict(num_train=48, num_test=8),
    "llava_med": dict(num_train=40, num_test=8),
    "uni_med": dict(num_train=24, num_test=8),
    "auxol": dict(images_per_part=6),
}


def _tiny(name: str, root) -> tuple:
    """(config on fresh phantoms under ``root``, prepared as a run prepares it, its format)."""
    config = get_config(name)
    config.data.root = str(root)
    config.data.phantoms.update(FEW[config.paper])
    return config, experiment.prepare_config(config)


def _real_batches(config, fmt, count: int = 1) -> list[dict]:
    """The shapes and dtypes of the first ``count`` batches the training pipeline yields."""
    data, _ = pipeline.train_dataset(
        fmt,
        config.data,
        global_batch=int(config.train.batch_size),
        seed=int(config.seed),
        process_index=0,
        process_count=1,
    )
    it = iter(data)
    return [
        {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in next(it).items()}
        for _ in range(count)
    ]


@pytest.mark.parametrize(
    "name",
    [
        "rp3d_diag:tiny",
        "rp3d_diag:tiny,fusion=early",
        "llava_med:tiny",
        "llava_med:tiny,stage=1",
        "uni_med:tiny",
        "auxol:tiny,stage=sam",
    ],
)
def test_the_spec_is_the_first_real_batch(name, tmp_path):
    config, fmt = _tiny(name, tmp_path)
    (real,) = _real_batches(config, fmt)
    assert fmt.batch_spec(config) == real


def test_radfm_spec_is_each_batch_at_its_geometry_and_the_largest(tmp_path):
    """RadFM's batches vary (2D or 3D, S, depth): every real batch equals ``geometry_spec`` at
    its kind and geometry, and ``batch_spec`` is that of the largest one the config allows,
    which holds every real batch of its kind."""
    config, fmt = _tiny("radfm:tiny", tmp_path)
    spec = fmt.batch_spec(config)
    kinds = set()
    for real in _real_batches(config, fmt, count=6):
        is_3d = real["images"].shape[2] > 1  # (B, S, D, H, W, 3)
        kinds.add(is_3d)
        assert fmt.geometry_spec(config.data, is_3d, real["images"].shape[1:4]) == real
    assert kinds == {False, True}  # both kinds were seen
    # tiny: 8 2D rows x (184 + 2 x 16 patches) beat 4 3D rows x (184 + 2 x 4 x 16)
    assert spec == fmt.geometry_spec(config.data, False, (2, 1, 32))


@pytest.mark.parametrize(
    "rows_2d, rows_3d, images",
    [
        (4, 1, (4, 10, 1, 512, 512, 3)),  # released: 2D (4 x (2048 + 10 x 256))
        (1, 2, (2, 10, 64, 512, 512, 3)),  # two 3D rows: no halving, depth 64
        (1, 1, (1, 6, 64, 256, 256, 3)),  # one 3D row: half size; > 6 images only to depth 32
    ],
)
def test_radfm_largest_batch_rule(rows_2d, rows_3d, images):
    config = get_config("radfm")
    config.data.batch_size_2d, config.data.batch_size_3d = rows_2d, rows_3d
    fmt = experiment.format_module(config)
    spec = fmt.batch_spec(config)
    assert spec["images"].shape == images
    assert spec["input_ids"].shape == (images[0], 2048) and spec["valid"].dtype == np.bool_


@pytest.mark.parametrize(
    "name, key, shape",
    [
        ("rp3d_diag", "images", (8, 1, 32, 256, 256, 1)),
        ("rp3d_diag:fusion=early", "marks", (8, 4, 32)),
        ("radfm", "images", (4, 10, 1, 512, 512, 3)),
        ("llava_med", "images", (64, 224, 224, 3)),
        ("llava_med:version=v1.5", "images", (64, 336, 336, 3)),
        ("llava_med:stage=1", "input_ids", (128, 2048)),
        ("uni_med", "input_ids", (4, 1024)),
        ("auxol", "target", (8, 256, 256, 1)),
    ],
)
def test_a_paper_config_gets_its_batch_without_data(name, key, shape, tmp_path):
    """The released sizes, ``data.root`` an empty folder: nothing is needed or written."""
    config = get_config(name)
    config.data.root = str(tmp_path)
    spec = compiled_memory.abstract_batch(config)
    assert spec[key].shape == shape
    assert spec == experiment.format_module(config).batch_spec(config)
    assert not any(tmp_path.iterdir())


def test_rp3d_labels_take_the_stated_class_count_and_an_unset_one_is_named(tmp_path):
    config = get_config("rp3d_diag")
    config.data.root = str(tmp_path)
    assert compiled_memory.abstract_batch(config)["labels"].shape == (8, 5569)
    config.model.num_classes = 0
    with pytest.raises(
        ValueError, match=r"model\.num_classes is 0: .*--config\.model\.num_classes"
    ):
        compiled_memory.abstract_batch(config)


def test_completion_without_data_fills_only_unset_fields(tmp_path):
    """LLaVA-Med's token ids (-1 until the tokenizer sets them) are filled, so the released
    model builds; RadFM keeps its stated 32000-token vocabulary (its complete_config would
    put the phantom tokenizer's there)."""
    llava = get_config("llava_med")
    llava.data.root = str(tmp_path)
    compiled_memory.abstract_batch(llava)
    assert llava.model.patch_id >= 0 and llava.model.start_id >= 0
    assert llava.model.llm.vocab_size == 32004 and llava.data.image_token_len == 256
    model = nnx.eval_shape(
        lambda: experiment.paper_module(llava).build_model(llava, rngs=nnx.Rngs(0))
    )
    assert (model.start_id, model.end_id) == (llava.model.start_id, llava.model.end_id)

    radfm = get_config("radfm")
    radfm.data.root = str(tmp_path)
    compiled_memory.abstract_batch(radfm)
    assert radfm.model.llm.vocab_size == 32000


@pytest.mark.parametrize(
    "name",
    ["rp3d_diag", "radfm", "llava_med", "llava_med:stage=1", "uni_med", "auxol"]
    + ["rp3d_diag:tiny", "radfm:tiny", "llava_med:tiny", "uni_med:tiny", "auxol:tiny,stage=sam"],
)
def test_remat_choices_are_valid(name):
    """``train.remat_policy`` is one ``radjax.train.step`` takes ('' | 'full' | a
    jax.checkpoint_policies name) and every ``model.*.remat`` flag a bool (their compiled
    peaks: the package READMEs' "Memory" sections)."""
    config = get_config(name)
    policy = config.train.remat_policy
    assert policy in ("", "full") or callable(getattr(jax.checkpoint_policies, policy, None))
    flags = [v.remat for v in config.model.values() if hasattr(v, "remat")]
    flags += [config.model.remat] if "remat" in config.model else []
    assert all(isinstance(f, bool) for f in flags)
