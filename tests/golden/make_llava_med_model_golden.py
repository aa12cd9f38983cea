"""Golden outputs of the ORIGINAL LLaVA-Med image path (projector + splice), both versions, for
radjax's parity tests (``tests/papers/llava_med/test_llava_med_golden.py``).

Run by hand (pytest does not collect this file), from the repository root::

    python tests/golden/make_llava_med_model_golden.py --v10 /tmp/lm_src/v10 \
        --v15 /tmp/lm_src/v15 --out tests/golden/data/llava_med_model.npz

``--v10`` / ``--v15`` hold ``llava/`` of microsoft/LLaVA-Med at b9a98a7 (v1.0) and d406e3f
(v1.5) (``git archive <commit> llava | tar -x -C <dir>``). Needs torch and transformers
(the radjax venv's 5.x works: the code paths run here use only ``CLIPVisionModel``,
``LlamaModel`` / ``MistralModel`` construction and ``nn`` modules).

v1.0: the ORIGINAL ``LlavaLlamaForCausalLM`` (llava/model/llava.py) is built on a tiny
``LlavaConfig`` and set up by its own ``initialize_vision_modules`` (from a saved tiny
CLIP directory; it casts the tower to fp16, and the tower is cast back to f32 as train.py
does for an f32 run) and ``initialize_vision_tokenizer(mm_use_im_start_end=True,
tune_mm_mlp_adapter=True)`` (which adds ``<im_patch>``, ``<im_start>``, ``<im_end>``,
mean-initialises the start / end rows and sets ``orig_embeds_params``, the stage-1 detach
path). Its ``forward`` (``LlavaLlamaModel.forward``: tower features at layer -2 without CLS,
``mm_projector``, the start / end splice) and ``LlavaLlamaForCausalLM.forward`` (lm_head,
shifted cross-entropy) run as released. Stand-ins:

- the CLIP tower: a tiny random ``transformers.CLIPVisionModel`` (16 px, 4 px patches -> 16
  patch features of width 8, 3 layers) instead of ViT-L/14 (radjax's CLIP is tested against
  transformers' ``CLIPVisionModel`` in tests/models/test_vit.py);
- the LLaMA layers: ``LlamaModel.forward`` (the parent the original calls with the spliced
  ``inputs_embeds``) is replaced by ``causal_mean`` (hidden[t] = mean of the embeddings up
  to t: parameter-free, and causal so that every embedding, the start / end rows included,
  reaches later logits and gets a gradient); the spliced ``inputs_embeds`` it receives are
  recorded (radjax's LLaMA is tested against transformers elsewhere; the original's LLaMA
  is transformers' own);
- ``extract_visual_features``' dummy features, hard-coded ``zeros(256, 1024)``: zeros of
  the tiny tower's (16, 8) (they only enter as ``0 * mm_projector(dummy)``);
- the tokenizer: a stand-in with ``add_tokens`` / ``convert_tokens_to_ids`` / ``len`` over 32
  base tokens (``initialize_vision_tokenizer`` uses nothing else); ``open_clip`` (imported by
  llava.py for BiomedCLIP, unused): an empty module; ``AutoConfig.register`` /
  ``AutoModelForCausalLM.register`` at the end of the model files: no-ops during their
  import (transformers 5 has its own ``llava`` type, so the registration would raise).

Recorded for a batch of three rows (two with an image block at different offsets, one
text-only: the dummy-feature path): the splice's ``inputs_embeds``, logits, loss; then the
stage-1 gradients of the loss on the two image rows (``orig_embeds_params`` set:
``model.mm_projector.*`` and ``model.embed_tokens.weight``, whose gradient is non-zero only
on the ``<im_start>`` / ``<im_end>`` rows).

v1.5: the ORIGINAL ``LlavaMistralForCausalLM`` (llava_mistral.py + llava_arch.py) on a tiny
``LlavaMistralConfig`` (``mm_projector_type='mlp2x_gelu'``, select layer -2, ``patch``
features, the same tiny CLIP directory as ``mm_vision_tower``, loaded by
``CLIPVisionTower.load_model`` as builder.py does), and its
``prepare_inputs_labels_for_multimodal`` on three right-padded rows with one -200 each (one
truncated by ``tokenizer_model_max_length``) and a text-only row (which still consumes an
image). Recorded: the new ``inputs_embeds``, ``labels``, ``attention_mask``.

Every 1-D parameter (norms, biases, CLIP's class embedding) gets N(0, 0.1) noise after
construction. Keys: ``v10/sd/<key>`` (the LLaVA state dict, without the tower), ``v10/clip/<key>``
(the tower's CLIPVisionModel state dict), ``v10/in/{input_ids,attention_mask,labels,images}``
(images (B, 3, H, W)), ``v10/mid/{features,projected}``, ``v10/out/{inputs_embeds,logits,loss}``,
``v10/grad/<key>``, ``v10/meta/{start_id,end_id,patch_id}``; the same under ``v15/`` with
``v15/out/{inputs_embeds,labels,attention_mask}``; ``meta/{repo,commits,config}``.
Deterministic (seed 0).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

REPO = "microsoft/LLaVA-Med"
V10_COMMIT = "b9a98a736d2ef05bcf5ff345be6403fb3a664eaf"
V15_COMMIT = "d406e3fc7c3d1e4c797a7676de18cbfd070b6d2c"
CLIP = dict(
    image_size=16,
    patch_size=4,
    hidden_size=8,
    intermediate_size=16,
    num_hidden_layers=3,
    num_attention_heads=2,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
LLM = dict(hidden_size=12, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2)
BASE_VOCAB = 32
PATCHES = 16  # (16 // 4) ** 2
V15_MAX = 26  # tokenizer_model_max_length: row 1 (24 text + 16 image) is cut


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy().copy()


def _stub(name: str, path: str | None = None, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=path is not None)
    if path is not None:
        module.__path__ = [path]
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _load(name: str, path: Path) -> types.ModuleType:
    """Imports ``path`` as ``name``; the Auto* registrations at the end of the original model
    files are no-ops here (transformers 5 ships its own ``llava`` model type, so registering
    the name again raises; the registry plays no part in the forward)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    saved = AutoConfig.register, AutoModelForCausalLM.register
    AutoConfig.register = AutoModelForCausalLM.register = lambda *a, **k: None
    try:
        spec.loader.exec_module(module)
    finally:
        AutoConfig.register, AutoModelForCausalLM.register = saved
    return module


def _noise_1d(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


def _clip_dir(root: Path, seed: int) -> Path:
    """A tiny random CLIPVisionModel (+ its image processor config) saved as a local dir."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    model = CLIPVisionModel(CLIPVisionConfig(**CLIP)).eval()
    _noise_1d(model, torch.Generator().manual_seed(seed + 1))
    out = root / "tiny-clip"
    model.save_pretrained(out, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size=16).save_pretrained(out)
    return out


class StandInTokenizer:
    """What ``initialize_vision_tokenizer`` reads of a tokenizer: add_tokens, ids, len."""

    def __init__(self, size: int):
        self.vocab = {f"t{i}": i for i in range(size)}

    def add_tokens(self, tokens, special_tokens=False):
        new = [t for t in tokens if t not in self.vocab]
        for t in new:
            self.vocab[t] = len(self.vocab)
        return len(new)

    def convert_tokens_to_ids(self, tokens):
        return [self.vocab[t] for t in tokens]

    def __len__(self):
        return len(self.vocab)


# ----------------------------------------------------------------------------- v1.0


def causal_mean(embeds: torch.Tensor) -> torch.Tensor:
    """The LLaMA layers' stand-in: hidden[t] = mean(embeds[:t + 1]) (parameter-free, causal:
    every position's embedding reaches every later logit, as through attention)."""
    steps = torch.arange(1, embeds.shape[1] + 1, dtype=embeds.dtype)[None, :, None]
    return torch.cumsum(embeds, dim=1) / steps


def _stand_in_llama_forward(self, input_ids=None, inputs_embeds=None, **kwargs):
    from transformers.modeling_outputs import BaseModelOutputWithPast

    return BaseModelOutputWithPast(last_hidden_state=causal_mean(inputs_embeds))


def run_v10(src: Path, clip_dir: Path, seed: int) -> dict[str, np.ndarray]:
    import transformers

    _stub("open_clip")
    _stub("llava", str(src / "llava"))
    _stub("llava.model", str(src / "llava" / "model"))
    _load("llava.model.utils", src / "llava" / "model" / "utils.py")
    llava = _load("llava.model.llava", src / "llava" / "model" / "llava.py")

    torch.manual_seed(seed)
    config = llava.LlavaConfig(vocab_size=BASE_VOCAB, **LLM)
    model = llava.LlavaLlamaForCausalLM(config)
    model.model.initialize_vision_modules(vision_tower=str(clip_dir), mm_vision_select_layer=-2)
    tower = model.model.vision_tower[0].to(dtype=torch.float32)  # train.py:540, f32 run
    tokenizer = StandInTokenizer(BASE_VOCAB)
    model.initialize_vision_tokenizer(
        mm_use_im_start_end=True, tokenizer=tokenizer, device="cpu", tune_mm_mlp_adapter=True
    )
    gen = torch.Generator().manual_seed(seed + 2)
    _noise_1d(model, gen)
    model.eval()
    patch, start, end = tokenizer.convert_tokens_to_ids(["<im_patch>", "<im_start>", "<im_end>"])
    assert (tower.config.im_patch_token, tower.config.im_start_token) == (patch, start)

    length = 28
    rng = np.random.default_rng(seed)
    block = [start] + [patch] * PATCHES + [end]
    rows = [
        [1, *rng.integers(3, BASE_VOCAB, 2), *block, *rng.integers(3, BASE_VOCAB, 5)],
        [1, *rng.integers(3, BASE_VOCAB, 6), *block, *rng.integers(3, BASE_VOCAB, 3)],
        [1, *rng.integers(3, BASE_VOCAB, 12)],  # text-only: the dummy-feature path
    ]
    pad = 0
    ids = torch.full((3, length), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor([int(t) for t in row])
    attention = ids != pad
    labels = torch.where(attention, ids, torch.full_like(ids, -100))
    labels[:, :3] = -100
    labels[(ids == patch) | (ids == start)] = -100
    images = torch.randn(3, 3, 16, 16, generator=gen)

    captured = {}
    projector = model.model.mm_projector
    extract = model.model.extract_visual_features

    def recording_extract(vision_tower, images):
        feats, dummy = extract(vision_tower, images)
        captured["features"] = feats
        # the original's dummy is hard-coded zeros(256, 1024) (ViT-L/14 at 224): the same
        # zeros at the tiny tower's size (it only enters as 0 * projector(dummy))
        return feats, torch.zeros(feats.shape[1:], dtype=dummy.dtype)

    model.model.extract_visual_features = recording_extract

    def record_projected(module, args, out):  # the first call: the image features
        captured.setdefault("projected", out.detach())  # (returns None: output unchanged)

    handle = projector.register_forward_hook(record_projected)
    hidden_in = {}
    original_forward = transformers.LlamaModel.forward

    def identity(self, *args, **kwargs):
        hidden_in["inputs_embeds"] = kwargs["inputs_embeds"]
        return _stand_in_llama_forward(self, **kwargs)

    transformers.LlamaModel.forward = identity
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=attention, labels=labels, images=images)
        arrays = {
            "in/input_ids": ids.numpy(),
            "in/attention_mask": attention.numpy(),
            "in/labels": labels.numpy(),
            "in/images": _np(images),
            "mid/features": _np(captured["features"]),
            "mid/projected": _np(captured["projected"]),
            "out/inputs_embeds": _np(hidden_in["inputs_embeds"]),
            "out/logits": _np(out.logits),
            "out/loss": _np(out.loss),
        }
        # stage 1 (orig_embeds_params set by tune_mm_mlp_adapter): gradients of the loss on
        # the image rows; the splice detaches every position but the start / end tokens
        handle.remove()
        model.zero_grad()
        out = model(
            input_ids=ids[:2], attention_mask=attention[:2], labels=labels[:2], images=images[:2]
        )
        out.loss.backward()
        arrays["grad/loss"] = _np(out.loss)
        for name, p in model.named_parameters():
            if p.grad is not None:
                arrays[f"grad/{name}"] = _np(p.grad)
    finally:
        transformers.LlamaModel.forward = original_forward
        handle.remove()
    arrays.update({f"sd/{k}": _np(v) for k, v in model.state_dict().items()})
    arrays.update({f"clip/{k}": _np(v) for k, v in tower.state_dict().items()})
    arrays.update(
        {"meta/patch_id": np.asarray(patch), "meta/start_id": np.asarray(start)}
        | {"meta/end_id": np.asarray(end), "meta/vocab_size": np.asarray(len(tokenizer))}
    )
    return arrays


# ----------------------------------------------------------------------------- v1.5


def run_v15(src: Path, clip_dir: Path, seed: int) -> dict[str, np.ndarray]:
    for name in ("llava", "llava.model", "llava.model.language_model"):
        _stub(name, str(src / Path(*name.split("."))))
    _stub("llava.model.multimodal_encoder", str(src / "llava/model/multimodal_encoder"))
    _stub("llava.model.multimodal_projector", str(src / "llava/model/multimodal_projector"))
    constants = _load("llava.constants", src / "llava" / "constants.py")
    mistral = _load(
        "llava.model.language_model.llava_mistral",
        src / "llava" / "model" / "language_model" / "llava_mistral.py",
    )

    torch.manual_seed(seed)
    config = mistral.LlavaMistralConfig(
        vocab_size=BASE_VOCAB,
        num_key_value_heads=1,
        mm_vision_tower=str(clip_dir),
        mm_projector_type="mlp2x_gelu",
        mm_hidden_size=CLIP["hidden_size"],
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        tokenizer_model_max_length=V15_MAX,
        tokenizer_padding_side="right",
        **LLM,
    )
    model = mistral.LlavaMistralForCausalLM(config)
    tower = model.get_vision_tower()
    tower.load_model()  # builder.py: `if not vision_tower.is_loaded: vision_tower.load_model()`
    gen = torch.Generator().manual_seed(seed + 3)
    _noise_1d(model, gen)
    model.eval()

    image = constants.IMAGE_TOKEN_INDEX
    rng = np.random.default_rng(seed + 1)
    rows = [
        [1, *rng.integers(3, BASE_VOCAB, 3), image, *rng.integers(3, BASE_VOCAB, 4)],
        [1, *rng.integers(3, BASE_VOCAB, 5), image, *rng.integers(3, BASE_VOCAB, 18)],  # cut
        [1, *rng.integers(3, BASE_VOCAB, 9)],  # text-only: consumes an image all the same
    ]
    length = max(len(r) for r in rows) + 2
    pad = 0
    ids = torch.full((3, length), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor([int(t) for t in row])
    attention = ids != pad
    labels = torch.where(attention & (ids != image), ids, torch.full_like(ids, -100))
    labels[:, :2] = -100
    images = torch.randn(3, 3, 16, 16, generator=gen)
    with torch.no_grad():
        _, position_ids, new_mask, _, embeds, new_labels = (
            model.prepare_inputs_labels_for_multimodal(ids, None, attention, None, labels, images)
        )
    assert position_ids is None
    arrays = {
        "in/input_ids": ids.numpy(),
        "in/attention_mask": attention.numpy(),
        "in/labels": labels.numpy(),
        "in/images": _np(images),
        "out/inputs_embeds": _np(embeds),
        "out/labels": new_labels.numpy(),
        "out/attention_mask": new_mask.numpy(),
        "meta/max_length": np.asarray(V15_MAX),
        "meta/image_token_index": np.asarray(image),
    }
    sd = model.state_dict()
    arrays.update({f"sd/{k}": _np(v) for k, v in sd.items() if ".vision_tower." not in k})
    arrays.update({f"clip/{k}": _np(v) for k, v in tower.vision_tower.state_dict().items()})
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--v10", default="/tmp/s3/v10")
    parser.add_argument("--v15", default="/tmp/s3/v15")
    parser.add_argument("--out", default="tests/golden/data/llava_med_model.npz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_default_dtype(torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        clip_dir = _clip_dir(Path(tmp), args.seed)
        arrays = {f"v10/{k}": v for k, v in run_v10(Path(args.v10), clip_dir, args.seed).items()}
        for name in [m for m in sys.modules if m == "llava" or m.startswith("llava.")]:
            del sys.modules[name]
        v15 = run_v15(Path(args.v15), clip_dir, args.seed)
        arrays.update({f"v15/{k}": v for k, v in v15.items()})
    import transformers

    meta = dict(
        repo=REPO,
        commits={"v1.0": V10_COMMIT, "v1.5": V15_COMMIT},
        clip=CLIP,
        llm=LLM,
        base_vocab=BASE_VOCAB,
        versions=dict(torch=torch.__version__, transformers=transformers.__version__),
    )
    arrays["meta/config"] = np.asarray(json.dumps(meta))
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}: {len(arrays)} arrays")


if __name__ == "__main__":
    main()
