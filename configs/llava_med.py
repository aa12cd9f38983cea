"""LLaVA-Med: CLIP ViT-L/14 (layer -2, CLS dropped) + projector + LLaMA / Mistral, two stages
(the tiny recipe: three, see ``stage=0``).

Variants (``--config configs/llava_med.py:<arg>``, combined with commas):
  ``paper``     the released sizes (the default): v1.0 = CLIP ViT-L/14 at 224 (256 patch
                features), linear projector 1024 -> 4096, LLaMA-7B with the 32004-token
                vocabulary of LLaVA-7b-v0; v1.5 = CLIP ViT-L/14-336 (576 features),
                ``mlp2x_gelu`` projector, Mistral-7B-Instruct-v0.2. Weights from local
                directories (``model.clip_dir``, ``model.llm_dir``, ``model.checkpoint``).
  ``tiny``      the same architecture shrunk to train on the phantoms on 2 CPU cores: a
                3-layer CLIP-style tower on 32 px images with 8 px patches (16 features), a
                2-layer LLaMA of width 128 on the phantom tokenizer.
  ``stage=0``   tiny only: the stand-in for what the original starts from (a pretrained CLIP
                and a pretrained LLaVA / LLaMA): the whole tiny model, tower included,
                trains on the alignment captions (image-text pairs, CLIP's kind of data),
                900 steps; stages 1 and 2 then keep the tower frozen as released. Why: the
                tiny tower is random, and frozen it never learns anything, so the released
                two stages teach the tiny model modality and body part but not the lesion
                (held-out lesion presence 0.48 = the most-frequent-answer baseline, one
                answer for every image; training the tower in stage 2, ``train_tower``,
                does not change that in 400 steps); after stage 0 it reads it (demo: 0.85,
                baseline 0.48; package README, "The tiny recipe").
  ``stage=1``   alignment (the README's stage 1, ``--tune_mm_mlp_adapter True``): the
                projector and (v1.0) the ``<im_start>`` / ``<im_end>`` embedding rows train
                (``image_markers``), everything else is frozen; lr 2e-3, batch 128, one epoch
                of the alignment captions.
  ``stage=2``   instruction tuning (the default): projector + LLM train (the tower stays
                frozen), lr 2e-5, batch 64 (the README command: 8 GPUs x 1 x 8 accumulation),
                three epochs of the instruction conversations; started from a stage-1 workdir
                with ``--config.init_from.workdir=W1`` (``make demo`` chains them).
  ``train_tower``  the tower trains in stages 1 and 2 too (``optim.groups``; a deviation
                from the released code, kept for experiments).
  ``version=v1.0|v1.5``  the released v1.0 code (``###`` template, start / end tokens) or
                v1.5 (Mistral ``[INST]`` template, ``<image>`` splice). v1.5 has no released
                training code: its stages follow upstream LLaVA (see the package README).
  Phantoms (``data.phantoms.enabled``): on in ``tiny``, off otherwise.
"""

from __future__ import annotations

import ml_collections

from configs.common import add_stage_fields, parse_arg, tiny_llama
from radjax.papers.llava_med.phantoms import VQA_QUESTION_KINDS

VERSIONS = ("v1.0", "v1.5")
STAGES = (0, 1, 2)
# stage -> (conversation file of the released data, tiny phantom file); stage 0 is tiny-only
CONVERSATIONS = {
    0: ("", "alignment.json"),
    1: ("llava_med_alignment_500k.json", "alignment.json"),
    2: ("llava_med_instruct_60k_inline_mention.json", "instruct.json"),
}
# The tiny recipe's steps and learning rates per stage (see _tiny and the package README's
# "The tiny recipe": after ~900 caption steps of stage 0 the model reads lesion presence
# (600: hardly); stage 2 450 keeps the demo section within 2.5 minutes on 2 idle cores).
TINY_STEPS = {0: 900, 1: 100, 2: 450}
TINY_LR = {0: 1e-3, 1: 2e-3, 2: 1e-3}


def _groups(stage: int, version: str, train_tower: bool = False) -> tuple:
    """``optim.groups`` of a stage: the tower is frozen (LLaVA-Med keeps it outside the
    trained module tree) unless ``train_tower``; stage 1 trains only the projector and the
    v1.0 image markers; the tiny stage 0 trains everything."""
    tower = () if train_tower or stage == 0 else (("vision/.*", None),)
    if stage == 1:
        markers = (("image_markers", 1.0),) if version == "v1.0" else ()
        return (*tower, ("projector/.*", 1.0), *markers, (".*", None))
    return tower


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(
        arg,
        choices=dict(stage=STAGES, version=VERSIONS),
        tiny=False,
        paper=False,
        stage=2,
        version="v1.0",
        train_tower=False,
    )
    if a.tiny and a.paper:
        raise ValueError("config args tiny and paper exclude each other")
    if a.stage == 0 and not a.tiny:
        raise ValueError("config arg stage=0 is a stage of the tiny recipe: add tiny")
    v10 = a.version == "v1.0"
    c = ml_collections.ConfigDict()
    c.paper = "llava_med"  # the package radjax.papers.llava_med
    c.seed = 42  # the original's HF TrainingArguments seed

    # ---- model ----
    c.model = m = ml_collections.ConfigDict()
    m.version = a.version
    m.stage = a.stage
    # transformers CLIPVisionConfig names: openai/clip-vit-large-patch14(-336)
    m.vision = ml_collections.ConfigDict(
        dict(
            image_size=224 if v10 else 336,
            patch_size=14,
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            layer_norm_eps=1e-5,
            hidden_act="quick_gelu",
            select_layer=-2,  # mm_vision_select_layer of every script
            dtype="float32",
        )
    )
    m.projector = "linear" if v10 else "mlp2x_gelu"
    m.use_im_start_end = v10  # mm_use_im_start_end: v1.0 scripts True, v1.5 config False
    if v10:  # LLaMA-7B as LLaVA-7b-v0 holds it: [PAD], <im_patch>, <im_start>, <im_end> added
        llm = dict(vocab_size=32004, rms_norm_eps=1e-6, max_position_embeddings=2048)
        llm.update(num_kv_heads=None, intermediate_size=11008, model_type="llama")
    else:  # Mistral-7B-Instruct-v0.2 (the llava-med-v1.5-mistral-7b config)
        llm = dict(vocab_size=32000, rms_norm_eps=1e-5, max_position_embeddings=32768)
        llm.update(num_kv_heads=8, intermediate_size=14336, model_type="mistral")
        llm.update(rope_theta=1e6)
    m.llm = ml_collections.ConfigDict(
        dict(
            hidden_size=4096,
            num_layers=32,
            num_heads=32,
            dtype="float32",
            # compiled peak at fsdp=8, 1 row a device (x 8 accumulation): 20.9 GiB, 80.1 without
            remat=True,
            scan_layers=True,
            **llm,
        )
    )
    m.loss_chunks = 8
    # Weights a fresh run starts from (llava_med.pretrained_params): a local transformers
    # CLIPVisionModel directory, a local HF LLaMA / Mistral directory, and / or a LLaVA-Med
    # checkpoint (file or directory; v1.0's released weights are deltas on LLaMA-7B:
    # checkpoint_is_delta with llm_dir = the base, as llava/model/apply_delta.py).
    m.clip_dir = ""
    m.llm_dir = ""
    m.checkpoint = ""
    m.checkpoint_is_delta = False
    m.train_tower = a.train_tower
    # token ids, set by the data format (complete_config)
    m.patch_id = m.start_id = m.end_id = m.pad_token_id = m.eos_token_id = -1

    # ---- data ----
    c.data = d = ml_collections.ConfigDict()
    d.version = a.version
    d.root = "runs/data/llava_med"
    d.conversations = CONVERSATIONS[a.stage][0]
    d.image_folder = "images"
    d.vqa = ml_collections.ConfigDict({"test": "data_RAD/test.json"})
    d.vqa_image_folder = "data_RAD/images"
    d.baseline_file = "data_RAD/train.json"  # most-frequent-answer baseline ('' = none)
    d.answer_types = "vqa"  # or 'pvqa' (PathVQA's other / number / yes/no)
    d.tokenizer = "phantom"  # 'phantom' or a local tokenizer directory
    d.path_has_llama = False  # v1.0: "llama" in model_name_or_path -> BOS = </s>
    d.system = ""  # v1.0 system line ('' = conversation.V10_SYSTEM)
    d.max_length = 2048  # model_max_length of the README commands
    d.eval_prompt = "released"
    d.image_size = 0  # 0 = the tower's (complete_config)
    d.image_token_len = 0
    d.use_im_start_end = v10
    d.aspect_ratio = ""  # '' = the version's ('square' v1.0, 'pad' v1.5)
    d.jitter = not v10  # v1.5's 0/1-pixel pad offset (training only)
    d.require_image_token = True
    d.max_text_bytes = 512
    d.skip_bad_records = False
    d.num_threads = 2
    d.phantoms = ml_collections.ConfigDict(
        dict(enabled=False, num_train=600, num_test=96, seed=0, image_size=32, vqa_open_per_image=2)
    )

    # ---- training ----
    c.train = t = ml_collections.ConfigDict()
    stage1 = a.stage == 1
    t.batch_size = 128 if stage1 else 64
    t.steps = 3_900 if stage1 else 2_800  # 1 epoch of 500k / 128; 3 epochs of 60k / 64
    t.grad_accum = 1
    # 'full' / 'nothing_saveable' 20.9 GiB as '' (the LLM's layer remat; README "Memory")
    t.remat_policy = ""
    t.log_every = 50
    t.eval_every = 0 if stage1 else 1_000  # stage 1 is not evaluated on VQA
    t.eval_split = "test"

    c.optim = o = ml_collections.ConfigDict()
    o.name = "adamw"  # adamw_torch: betas (0.9, 0.999), eps 1e-8
    o.lr = 2e-3 if stage1 else 2e-5
    o.weight_decay = 0.0
    o.warmup_ratio = 0.03
    o.schedule = "cosine"
    o.grad_clip = 1.0
    o.groups = _groups(a.stage, a.version, a.train_tower)
    o.delay = ()

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, expert=1))
    c.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=3))
    # max_new_tokens 1024 as the VQA scripts; greedy (v1.5's README: temperature 0; v1.0
    # samples at 0.7 without a seed, which no evaluation can reproduce)
    c.eval = ml_collections.ConfigDict(dict(batch_size=8, max_new_tokens=1024, samples=4))
    # ((name, regex on the question), ...): scores per question kind beside the paper's
    # (llava_med.metrics.by_question_kind); none for the released data
    c.eval.question_kinds = ()

    add_stage_fields(c)  # model.lora, init_from (default off)

    if a.tiny:
        _tiny(c, a.stage)
    return c


def _tiny(c: ml_collections.ConfigDict, stage: int) -> None:
    """Shrinks every size so each stage trains in under a minute on 2 CPU cores."""
    m, d, t, o = c.model, c.data, c.train, c.optim
    m.vision.update(
        dict(
            image_size=32,
            patch_size=8,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=128,
        )
    )
    m.llm = tiny_llama()  # vocab_size: the phantom tokenizer's length (complete_config)
    m.loss_chunks = 1
    d.root = "runs/data/llava_med_phantoms"
    d.conversations = CONVERSATIONS[stage][1]
    d.vqa = ml_collections.ConfigDict({"test": "vqa/test.json"})
    d.vqa_image_folder = "images"
    d.baseline_file = "vqa/train.json"
    # The phantom tokenizer spends 104 tokens on the released system line; a short one keeps
    # the sequences at 112 (captions, the longest 108) / 188 (2-3 rounds, the longest 186).
    d.system = "A chat about a medical image."
    d.max_length = 188 if stage == 2 else 112
    d.eval_prompt = "train"  # the tiny LLM only ever sees the training template
    d.num_threads = 1
    d.phantoms.enabled = True
    # 3000 train images, not 600: from 600 the lesion is memorised per image more than read
    # (a pixel MLP: held-out presence 0.74 from 600 images, 0.93 from 3000, ~10k samples each)
    d.phantoms.num_train = 3000
    t.batch_size = 8
    t.steps = TINY_STEPS[stage]
    t.log_every = 25
    t.eval_every = TINY_STEPS[stage] if stage == 2 else 0
    o.lr = TINY_LR[stage]
    o.warmup_ratio = 0.05
    # constant after the warmup: the short tiny runs learn the closed questions sooner than
    # under the paper's cosine (held-out closed accuracy 0.67 vs 0.57 after 300-400 steps)
    o.schedule = "constant"
    c.checkpoint.every = TINY_STEPS[stage]
    c.eval.batch_size = 48  # 8 batches of the 384 test items (batch 8: ~2.5 s slower)
    c.eval.max_new_tokens = 28  # the longest answer + "\n###": 25 phantom tokens
    c.eval.question_kinds = VQA_QUESTION_KINDS  # lesion presence, modality, region, ...
