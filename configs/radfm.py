"""RadFM: 3D ViT + Perceiver resampler + LLaMA on interleaved 2D/3D radiology tasks.

Variants (``--config configs/radfm.py:<arg>``):
  ``paper``   the released model's sizes: 3D ViT (768, 12 layers, patches 32x32x4, 512^2 x 512
              tables), Perceiver 6 x 32 latents, LLaMA-13B (5120 wide, 40 layers, vocab 32000),
              about 14B parameters. Meant for ``--dry_run=<mesh>`` (abstract) or a pod with
              the converted checkpoint.
  ``tiny``    the same architecture shrunk to train on the phantoms in minutes on 2 CPU cores.
  ``entity_weight=<w>``  ``loss.entity_weight``, the loss weight of medical-entity tokens:
              1 = the released code's plain cross-entropy (default), 3 = the paper's
              weighting. ``tiny`` uses 3 unless the argument says otherwise (see ``_tiny``).
  ``freeze_llm_steps=<n>``  the paper's first stage: only the perceiver, fc and the image
              marker embeddings train for n steps (``optim.delay``).
  ``tasks=<a>+<b>``  train and evaluate only these phantom tasks (``data.phantom_tasks``),
              e.g. ``tiny,tasks=modality+caption``.
  ``stage=lesions|diagnosis|all``  with ``tiny``: the stages of the tiny recipe, each
              starting from the previous one's workdir (``--config.init_from.workdir``;
              ``make demo`` chains them): ``lesions`` 3000 steps of the 2D open diagnosis,
              ``diagnosis`` 1000 steps of open + closed diagnosis, ``all`` (the default) 2000
              steps of every task. Why: trained from scratch on all six tasks the tiny model learns the
              modality, anatomy and report wording but not the lesion (held-out diagnosis at
              the most-frequent-answer baseline after 3000 and 6000 steps; so does open +
              closed diagnosis from scratch); the open diagnosis alone makes the vision path
              read it, the yes/no question is then learnt in 1000 steps, and the all-task stage
              names the disorder in the 3D reports too (radfm/README.md, "The tiny recipe").
  Phantoms (``data.phantoms.enabled``): on in ``tiny``, off otherwise (``data.tasks`` and
  ``data.root`` name the task files).
"""

from __future__ import annotations

import ml_collections

from configs.common import add_stage_fields, given, parse_arg, tiny_llama
from radjax.papers.radfm.phantoms import TASKS as PHANTOM_TASKS

STAGES = ("all", "lesions", "diagnosis")
# The tiny recipe's stages before ``all``: (phantom tasks, steps). ``lesions``: the 2D studies'
# open diagnosis (a 12-way answer naming the disorder; with the yes/no closed task beside it
# from scratch neither is learnt in 3000 steps); ``diagnosis``: open + closed.
TINY_STAGES = {
    "lesions": (("diagnosis_open",), 3000),
    "diagnosis": (("diagnosis_open", "diagnosis_closed"), 1000),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(
        arg,
        choices=dict(stage=STAGES),
        tiny=False,
        paper=False,
        entity_weight=1.0,
        freeze_llm_steps=0,
        tasks="",
        stage="all",
    )
    if a.stage != "all" and not a.tiny:
        raise ValueError(f"config arg stage={a.stage} is a stage of the tiny recipe: add tiny")
    tasks = tuple(filter(None, a.tasks.split("+")))
    if a.stage != "all" and not tasks:
        tasks = TINY_STAGES[a.stage][0]
    unknown = [t for t in tasks if t not in PHANTOM_TASKS]
    if unknown:
        raise ValueError(
            f"config arg tasks: unknown {unknown}; choose from " + ", ".join(PHANTOM_TASKS)
        )
    c = ml_collections.ConfigDict()
    c.paper = "radfm"  # the package radjax.papers.radfm
    c.seed = 0

    # ---- model ----
    c.model = m = ml_collections.ConfigDict()
    m.vision = ml_collections.ConfigDict(
        dict(
            image_size=512,
            frames=512,
            patch_size=32,
            frame_patch_size=4,
            channels=3,
            dim=768,
            depth=12,
            heads=8,
            dim_head=64,
            mlp_dim=2048,
            dropout=0.1,
            emb_dropout=0.1,
            num_latents=32,
            perceiver_depth=6,
            perceiver_heads=8,
            perceiver_dim_head=64,
            perceiver_ff_mult=4,
            llm_dim=5120,
            dtype="float32",
            remat=False,
        )
    )
    # LLaMA-13B (Quick_demo/Language_files/config.json); vocab_size = the tokenizer's text
    # vocabulary, set by the data format.
    m.llm = ml_collections.ConfigDict(
        dict(
            vocab_size=32000,
            hidden_size=5120,
            num_layers=40,
            num_heads=40,
            intermediate_size=13824,
            rms_norm_eps=1e-6,
            max_position_embeddings=2048,
            model_type="llama",
            dtype="float32",
            # compiled peak at fsdp=8, 4 2D rows (10 x 512^2) a device: 56.5 GiB, 417 without
            remat=True,
            scan_layers=True,
        )
    )
    # token chunks of the fused head loss: at most (tokens / chunks, 32000) logits at a time
    m.loss_chunks = 8
    # Weights to start from (radfm.pretrained_params): the released RadFM checkpoint, or a
    # local HF LLaMA directory for the language model alone (the paper: PMC-LLaMA 13B).
    m.checkpoint = ""
    m.llm_dir = ""

    # ---- data ----
    c.data = d = ml_collections.ConfigDict()
    d.root = "runs/data/radfm"
    d.tasks = ml_collections.ConfigDict()  # filled with the phantom task files when empty
    d.phantom_tasks = tasks  # () = every phantom task
    d.tokenizer = "phantom"  # 'phantom' or a local HF (LLaMA) tokenizer directory
    d.max_images = 10
    d.tokens_per_image = 32  # = model.vision.num_latents
    d.max_length = 2048
    d.image_size = 512
    d.batch_size_2d = 4
    d.batch_size_3d = 1
    d.faithful_position_quirk = True
    d.radfm_modality_no_bug = False
    d.halve_single_3d = True
    d.random_crop_2d = True
    d.skip_bad_records = False
    # 'error': NaN/Inf voxels make a bad record; 'zero': set to 0, counted as repaired_records
    d.nonfinite = "error"
    d.num_threads = 2
    # Paper runs read data.tasks under data.root; the tiny variant writes phantoms there.
    d.phantoms = ml_collections.ConfigDict(
        dict(enabled=False, num_train=200, num_test=40, seed=0, image_size=64, max_depth=16)
    )

    # ---- loss ---- (the data marks entity tokens: batch["entity_mask"])
    c.loss = ml_collections.ConfigDict(dict(entity_weight=a.entity_weight))

    # ---- training ----
    c.train = t = ml_collections.ConfigDict()
    t.batch_size = 4  # nominal: the format sets 2D / 3D batch sizes
    t.steps = 100_000
    t.grad_accum = 1
    # whole-step policies save nothing over the LLM's layer remat: 'full' / 'nothing_saveable'
    # 56.6 GiB vs 56.5 (fsdp=8, 4 2D rows a device; README "Memory"); vision.remat: 57.4
    t.remat_policy = ""
    t.log_every = 50
    t.eval_every = 5_000
    t.eval_split = "test"

    c.optim = o = ml_collections.ConfigDict()
    o.name = "adamw"
    o.lr = 5e-5
    o.weight_decay = 0.0
    o.warmup_ratio = 0.03
    o.schedule = "cosine"
    o.grad_clip = 1.0
    o.groups = ()
    # The paper's first epoch trains only the perceiver and the projection: with
    # freeze_llm_steps=N the ViT and LLaMA keep their values for the first N steps.
    o.delay = (
        ((r"(vision/vision_encoder|lang_model)/.*", a.freeze_llm_steps),)
        if a.freeze_llm_steps
        else ()
    )

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, expert=1))
    c.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=3))
    c.eval = ml_collections.ConfigDict(dict(batch_size=4, max_new_tokens=200, bertscore=True))

    add_stage_fields(c)  # model.lora, init_from (default off)

    if a.tiny:
        _tiny(c)
        if "entity_weight" in given(arg):  # an explicit argument beats the tiny choice
            c.loss.entity_weight = a.entity_weight
        if a.stage != "all":
            steps = TINY_STAGES[a.stage][1]
            c.train.steps = c.train.eval_every = c.checkpoint.every = steps
            c.data.max_length = 80  # the longest diagnosis prompt + answer: 53 tokens
    return c


def _tiny(c: ml_collections.ConfigDict) -> None:
    """Shrinks every size so training takes a few minutes on 2 CPU cores."""
    m, d, t = c.model, c.data, c.train
    m.vision = ml_collections.ConfigDict(
        dict(
            image_size=32,
            frames=16,
            patch_size=8,
            frame_patch_size=4,
            channels=3,
            dim=48,
            depth=2,
            heads=4,
            dim_head=16,
            mlp_dim=96,
            dropout=0.1,
            emb_dropout=0.1,
            num_latents=16,
            perceiver_depth=2,
            perceiver_heads=4,
            perceiver_dim_head=16,
            perceiver_ff_mult=2,
            llm_dim=128,
            dtype="float32",
            remat=False,
        )
    )
    m.llm = tiny_llama()
    m.loss_chunks = 1
    # The paper's entity weight 3: the tiny schedule and the lessons below were tuned with it
    # (weighting CT/MRI tokens made the LLM read the 3D studies' modality).
    c.loss.entity_weight = 3.0
    # 16 resampled tokens per image: with 8 the LLM read one visual attribute of the 3D
    # studies (anatomy, or modality once entity-weighted) and guessed the other from it.
    d.tokens_per_image = 16
    d.max_images = 2
    d.root = "runs/data/radfm_phantoms"
    d.max_length = 184  # the longest phantom rationale with its image block
    d.image_size = 32
    d.batch_size_2d = 8
    d.batch_size_3d = 4
    d.num_threads = 1
    d.phantoms = ml_collections.ConfigDict(
        dict(enabled=True, num_train=600, num_test=24, seed=0, image_size=32, max_depth=4)
    )
    # 2000 steps keep `make demo` under 15 min; 3000 gave rationale disorder_named 0.833 (2000:
    # 0.667) and VQA BLEU-1 0.875 (0.667), the other metrics within 0.05 (radfm/README.md)
    t.steps = 2000
    t.log_every = 50
    t.eval_every = 2000
    # From scratch, at >= 1e-3 the LLM learns the text priors and ignores the image tokens,
    # whose image-dependent part starts at ~4 % of the perceiver output; 3e-4 with the vision
    # path at 3x (9e-4, where a linear probe on it learns the modality in 50 steps) reads them.
    c.optim.lr = 3e-4
    c.optim.groups = (("vision/.*", 3.0),)
    c.optim.warmup_ratio = 0.05
    c.checkpoint.every = 1000
    c.eval.batch_size = 8
    c.eval.max_new_tokens = 96
