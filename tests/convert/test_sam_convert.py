"""A whole SAM checkpoint (radjax.convert.sam) against transformers' SamModel on a tiny random
config: box-prompted low-res masks and IoU of radjax's Sam equal SamModel's (rel err < 1e-4),
and a checkpoint of another size is refused naming the key."""

import numpy as np
import pytest
from flax import nnx

from radjax.convert import sam as convert_sam
from radjax.convert.torch_io import ConversionError, assign
from radjax.models.sam.image_encoder import SamVisionConfig
from radjax.models.sam.sam import Sam, sam_config
from tests.parity import assert_close

VISION = SamVisionConfig(
    image_size=64,
    patch_size=8,
    width=32,
    depth=2,
    num_heads=2,
    out_channels=16,
    window_size=3,  # the 8 x 8 map is padded to 9 x 9 in the windowed block
    global_attn_indexes=(1,),
)
CONFIG = sam_config(VISION, dim=16, decoder_heads=2, decoder_mlp_dim=32, iou_head_hidden_dim=24)


def _hf_sam(torch, transformers):
    cfg = transformers.SamConfig(
        vision_config=dict(
            hidden_size=VISION.width,
            num_hidden_layers=VISION.depth,
            num_attention_heads=VISION.num_heads,
            output_channels=VISION.out_channels,
            image_size=VISION.image_size,
            patch_size=VISION.patch_size,
            window_size=VISION.window_size,
            global_attn_indexes=list(VISION.global_attn_indexes),
            num_pos_feats=8,
            mlp_dim=int(VISION.width * VISION.mlp_ratio),
        ),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8),
        mask_decoder_config=dict(
            hidden_size=16,
            mlp_dim=32,
            num_attention_heads=2,
            iou_head_hidden_dim=24,
            layer_norm_eps=1e-5,  # the original's; transformers' default is 1e-6
        ),
    )
    torch.manual_seed(0)
    model = transformers.SamModel(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # transformers' 1e-10 / 0.02 init would hide wrong weights
        for name, p in model.named_parameters():
            if name.endswith("pos_embed") or "rel_pos" in name or p.ndim == 1:
                p.copy_(p + 0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
    return model


def test_whole_sam_from_transformers_matches_sam_model(torch, transformers):
    ref = _hf_sam(torch, transformers)
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    model = nnx.eval_shape(lambda: Sam(CONFIG, rngs=nnx.Rngs(0)))
    assign(model, convert_sam.sam_params(sd, CONFIG))
    pixels = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32)
    boxes = np.array([[[6.0, 10.0, 40.0, 50.0], [20.0, 2.0, 60.0, 30.0]]], np.float32)
    with torch.no_grad():
        out = ref(
            pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)),
            input_boxes=torch.tensor(boxes),
            multimask_output=False,
        )
    want_masks = out.pred_masks[0, :, 0].numpy()  # (prompts, 32, 32)
    want_iou = out.iou_scores[0, :, 0].numpy()
    assert want_masks.std() > 0.1
    embeddings = model.encode(pixels)
    masks, iou = model.decode(embeddings, boxes=boxes[0])
    assert masks.shape == (2, 32, 32, 1)
    assert_close(np.asarray(masks[..., 0]), want_masks, 1e-4, "masks vs SamModel")
    assert_close(np.asarray(iou[:, 0]), want_iou, 1e-4, "IoU vs SamModel")


def test_a_checkpoint_of_another_size_is_refused_naming_the_key(torch, transformers):
    sd = {k: v.numpy() for k, v in _hf_sam(torch, transformers).state_dict().items()}
    wider = sam_config(
        SamVisionConfig(**{**VISION.__dict__, "width": 64}),
        dim=16,
        decoder_heads=2,
        decoder_mlp_dim=32,
        iou_head_hidden_dim=24,
    )
    with pytest.raises(ConversionError, match=r"patch_embed.*checkpoint \(32, 3, 8, 8\)"):
        convert_sam.sam_params(sd, wider)
