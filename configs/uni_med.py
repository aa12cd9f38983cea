"""Uni-Med: EVA ViT-g + Connector-MoE (routed per task) + LLaMA-2-7b-chat with LoRA.

Variants (``--config configs/uni_med.py:<arg>``):
  ``paper``   (the default sizes) the released model: EVA ViT-g/14 at 224 (39 blocks, 1408
              wide, frozen), fresh frozen ln_vision, projection x4 -> 64 tokens of 5632,
              5 ``moe_mlp`` experts 5632 -> 4096 -> 4096, soft router on concat(task token,
              token), Llama-2-7b (4096, 32 layers) frozen with LoRA r 8, alpha 16, dropout
              0.05 on q/k/v/o/gate/up/down; train_configs/uni_med.yaml's optimiser (AdamW,
              wd 0.05, lr 1e-5, 5000 warm-up steps, cosine over 50 000 steps, batch 4, one
              dataset per batch). Meant for ``--dry_run=<mesh>`` or real weights
              (``model.eva_checkpoint``, ``model.llm_dir``, ``data.tokenizer``).
  ``tiny``    the same architecture shrunk to learn the phantoms on 2 CPU cores.
  ``router=soft|hard|constant|sparse``  ``router_type`` (hard: task i -> expert i).
  ``router_input=task_token|token|task``  ``router_method`` = router_task_token (concat, the
              released default) | router_token | router_task.
  ``resample=projection|avgpool|maxpool``  ``resample_method`` (pools: 2 x 2, tokens of the
              tower's width, so the task token is that wide too).
  ``tasks=a+b``  train / evaluate only these phantom tasks (``vqa``, ``refer``, ``identify``,
              ``caption``, ``cls``), e.g. ``tiny,tasks=vqa+refer``.
  ``aux=<w>``  the load-balancing loss weight (beyond the original; 0 = off, released).
  ``train_vision``  (tiny) the tower trains (the original freezes it; see ``_tiny``).
"""

from __future__ import annotations

import ml_collections

from configs.common import add_stage_fields, parse_arg, tiny_llama
from radjax.nn.lora import LLAMA_ALL_LINEAR
from radjax.papers.uni_med.connector import RESAMPLE_METHODS, ROUTER_INPUTS, ROUTER_TYPES, TASKS
from radjax.papers.uni_med.data import RELEASED_SAMPLE_RATIO

# The tiny run's steps: the demo section (training + two evaluations) within 2.5 min on 2
# idle cores (package README, "The tiny recipe").
TINY_STEPS = 900


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(
        arg,
        choices=dict(
            router=ROUTER_TYPES, router_input=tuple(ROUTER_INPUTS), resample=RESAMPLE_METHODS
        ),
        tiny=False,
        paper=False,
        router="soft",
        router_input="task_token",
        resample="projection",
        tasks="",
        aux=0.0,
        train_vision=False,
    )
    tasks = tuple(filter(None, a.tasks.split("+")))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"config arg tasks: unknown {unknown}; choose from " + ", ".join(TASKS))
    if a.tiny and a.paper:
        raise ValueError("config args tiny and paper exclude each other")
    c = ml_collections.ConfigDict()
    c.paper = "uni_med"  # the package radjax.papers.uni_med
    c.seed = 42  # train.py: seed 42 + rank

    # ---- model ----
    c.model = m = ml_collections.ConfigDict()
    # create_eva_vit_g (eva_vit.py:414-442) at image_size 224; the original VisionTransformer
    # arguments (radjax.convert.eva_vit.vit_config) + compute dtype
    m.vision = ml_collections.ConfigDict(
        dict(
            img_size=224,
            patch_size=14,
            embed_dim=1408,
            depth=39,
            num_heads=16,
            mlp_ratio=4.3637,
            qkv_bias=True,
            norm_eps=1e-6,
            dtype="float32",
            remat=True,  # use_checkpoint: True
        )
    )
    m.train_vision = a.train_vision  # the original freezes the tower (and ln_vision, always)
    # ConnectorConfig fields (vision / LLM widths come from m.vision / m.llm)
    m.connector = ml_collections.ConfigDict(
        dict(
            resample=a.resample,
            resample_rate=4,
            tasks=TASKS,
            num_task_tokens=1,
            task_token_dim=None,  # task_token_c = the resampled width (5632 for projection)
            num_experts=5,
            expert_type="mlp",
            router_type=a.router,
            router_input=a.router_input,
            router_hidden=None,
            sparse_topk=2,
            dispatch=False,
            aux_loss_weight=a.aux,
        )
    )
    # Llama-2-7b-chat-hf; vocab_size 32000 (the data format keeps it when set)
    m.llm = ml_collections.ConfigDict(
        dict(
            vocab_size=32000,
            hidden_size=4096,
            num_layers=32,
            num_heads=32,
            intermediate_size=11008,
            rms_norm_eps=1e-5,
            max_position_embeddings=4096,
            model_type="llama",
            dtype="float32",
            # The original sets no use_grad_checkpoint_llm; radjax scans the layers with remat
            # (same computation; LoRA dropout masks from per-layer streams): peak at fsdp=8, 4
            # rows a device, 14.95 GiB (unscanned: 122 GiB, 117 with remat; README "Memory")
            remat=True,
            scan_layers=True,
        )
    )
    m.loss_chunks = 8
    # Weights a fresh run starts from (uni_med.pretrained_params)
    m.eva_checkpoint = ""  # eva_vit_g.pth
    m.llm_dir = ""  # Llama-2-7b-chat-hf
    m.checkpoint = ""  # a Uni-Med checkpoint_*.pth (connector + LoRA)

    # ---- data ----
    c.data = d = ml_collections.ConfigDict()
    d.root = "runs/data/uni_med"
    d.tasks = ml_collections.ConfigDict()  # the phantom datasets when empty (tiny)
    # each batch's dataset drawn by these ratios (train_configs/uni_med.yaml sample_ratio;
    # MultiIterLoader); names of datasets a run does not have are ignored
    d.sample_ratio = ml_collections.ConfigDict(dict(RELEASED_SAMPLE_RATIO))
    d.phantom_tasks = tasks
    d.splits = ("train", "test")
    d.tokenizer = "phantom"  # or a local Llama-2 tokenizer directory
    d.image_size = 224
    d.max_length = 1024
    d.max_txt_len = 1024  # answer tokens (with </s>) kept, as max_txt_len
    d.truncate_50_words = True  # blip_caption_new's max_words=50
    d.chat_template = True
    d.eval_prompt = "original"  # the eval scripts' template (double BOS), or 'train'
    d.one_task_per_batch = True  # MultiIterLoader: every batch from one dataset
    d.batch_size = 4  # batch_size_train per dataset
    d.skip_bad_records = False
    d.num_threads = 2
    # 1000 SLAKE / MIMIC / MedMNIST phantoms a split for training: a linear probe on the tiny
    # model's (random) patch tokens finds the lesion quadrant of 87% of held-out images when
    # trained on the 727 REC boxes of 1000 images, 62% on the 179 of 240
    d.phantoms = ml_collections.ConfigDict(
        dict(enabled=False, num_train=1000, num_test=24, seed=0, medmnist_size=64)
    )

    # ---- training (train_configs/uni_med.yaml) ----
    c.train = t = ml_collections.ConfigDict()
    t.batch_size = 4  # nominal: data.batch_size rows a batch
    t.steps = 50_000  # max_epoch 1 x iters_per_epoch 50000
    t.grad_accum = 1
    t.remat_policy = ""  # 'full': 122.3 GiB as '' (fsdp=8, 4 rows a device; README "Memory")
    t.log_every = 50  # log_freq
    t.eval_every = 50_000
    t.eval_split = "test"

    c.optim = o = ml_collections.ConfigDict()
    o.name = "adamw"
    o.lr = 1e-5  # init_lr
    o.b1, o.b2, o.eps = 0.9, 0.999, 1e-8
    o.weight_decay = 0.05
    # lr_sched linear_warmup_cosine_lr (uni_med/common/optims.py): 5000 warm-up steps from
    # warmup_lr 1e-6, then a cosine over all 50k steps (warm-up included) to min_lr 1e-7
    o.schedule = "linear_warmup_cosine_lr"
    o.warmup_steps = 5000
    o.warmup_lr = 1e-6
    o.min_lr = 1e-7
    # no weight decay where runner_base.py exempts it: ndim < 2 or bias / ln / bn in the name
    o.no_decay = ("bias", "ln", "bn")
    o.no_decay_ndim = 2
    o.grad_clip = 0.0  # no clipping
    # the tower and ln_vision frozen, the connector (task tokens, router, experts) trained;
    # with model.lora (freeze_base) the adapters train and everything else is frozen
    o.groups = (
        ("vision/ln_vision/.*", None),
        ("vision/vit/.*", 1.0 if a.train_vision else None),
        ("connector/.*", 1.0),
    )
    o.delay = ()

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, expert=1))
    c.checkpoint = ml_collections.ConfigDict(dict(every=5000, keep=3))
    # min_new_tokens 1: generate(min_length=1) on an inputs_embeds prompt (transformers 4.30)
    c.eval = ml_collections.ConfigDict(
        dict(batch_size=40, max_new_tokens=100, min_new_tokens=1, meteor=True)
    )

    add_stage_fields(c)  # model.lora, init_from (default off)
    # lora_r 8, lora_alpha 16, lora_dropout 0.05 (hard-wired), lora_target_modules ['all']
    c.model.lora.update(dict(rank=8, alpha=16.0, dropout=0.05, targets=LLAMA_ALL_LINEAR))

    if a.tiny:
        _tiny(c, a)
    return c


def _tiny(c: ml_collections.ConfigDict, a) -> None:
    """Every size shrunk so training takes a minute or two on 2 CPU cores."""
    m, d, t = c.model, c.data, c.train
    m.vision.update(
        dict(img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=4, remat=False)
    )
    m.llm = tiny_llama()  # vocab_size: the phantom tokenizer's
    m.loss_chunks = 1
    d.root = "runs/data/uni_med_phantoms"
    d.image_size = 64
    d.max_length = 128  # the longest phantom caption prompt + answer: 128 tokens
    d.batch_size = 8
    d.num_threads = 1
    d.phantoms.enabled = True
    t.batch_size = 8
    t.steps = TINY_STEPS
    t.log_every = 50
    t.eval_every = TINY_STEPS
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0
    # the tiny recipe was measured with a cosine from 0 after 5% warm-up
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = None
    c.optim.warmup_ratio = 0.05
    # batches follow the record counts: with the released ratios (captions 8 / 25 of the
    # batches, VQA 5 / 25) the held-out closed VQA stayed at the baseline 0.500 after 800
    # steps (record counts, 900 steps: 0.792) and the reports were no better
    c.data.sample_ratio = ml_collections.ConfigDict()
    c.checkpoint.every = TINY_STEPS
    c.eval.batch_size = 8
    c.eval.max_new_tokens = 36  # the longest phantom report: 34 tokens
    c.eval.meteor = False
    c.model.lora.dropout = 0.0
    # The tiny LLM is random, not a pretrained LLaMA: frozen with LoRA alone it barely learns
    # the phantoms (train loss 4.5 after 350 steps, from 6); with its base trained as well
    # (the adapters still train, on top) it is at 0.2 after 250 steps.
    c.model.lora.freeze_base = False
