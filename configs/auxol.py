"""AuxOL (qianxihaoyue/AuxOL): a frozen SAM and an auxiliary U-Net learnt online.

``python -m experiments.online --config configs/auxol.py:<args> --workdir W``. Arguments:

  ``tiny``           phantom stream (AuxOL's layout, ``radjax.papers.auxol.phantoms``) and
                     the tiny SAM of ``sam=tiny``; the paper default streams
                     ``TestDatasets/Polyp`` (the five polyp parts) with SAM ViT-H, run.sh.
  ``sam=``           ``vit_b`` | ``vit_l`` | ``vit_h`` | ``medsam`` (ViT-B, MedSAM's weights)
                     | ``tiny``; ``model.sam.checkpoint`` is the original segment-anything
                     ``.pth`` (or a transformers ``SamModel`` folder).
  ``prompt=``        ``box`` (default) | ``point``.
  ``paper``          where the paper and the released code differ, the paper: the weighted
                     BCE PraNet's loss meant (the code's is a plain mean), the loss-based
                     queue replacement the paper describes (the code is FIFO), a point
                     prompt's map counted once (the code adds it twice). Without it every
                     behaviour is the code's; combines with ``tiny``.
  ``stage=sam``      with ``tiny``: pre-train the tiny SAM briefly on phantoms of the first
                     look of every dataset (``experiments.train``, MedSAM's recipe); the
                     online run then reads it with ``--config.model.sam.workdir=<that run>``.
                     Weak on purpose: 60 steps, and the stream's malignant look is new to it.

Everything else is a field: ``--config.online.interval=2``, ``--config.online.noise=0.1``,
``--config.online.queue_policy=loss``, ``--config.data.dataset=BUSI
--config.data.parts='("benign",)'``.
"""

from __future__ import annotations

import ml_collections

from configs.common import parse_arg

SAMS = ("vit_b", "vit_l", "vit_h", "medsam", "tiny")
_DEFAULT_SAM = ""  # tiny with `tiny`, else vit_h (run.sh)
PROMPTS = ("box", "point")
STAGES = ("online", "sam")
# run.sh's checkpoints (``tool.load_model``); MedSAM point prompts use
# medsam_point_prompt_flare22.pth, set ``model.sam.checkpoint`` for it.
CHECKPOINTS = {
    "vit_b": "checkpoints/sam_vit_b_01ec64.pth",
    "vit_l": "checkpoints/sam_vit_l_0b3195.pth",
    "vit_h": "checkpoints/sam_vit_h_4b8939.pth",
    "medsam": "checkpoints/medsam_vit_b.pth",
    "tiny": "",
}
# The tiny SAM: 128 px inputs, 8 px patches (a 16 x 16 grid, 64 x 64 low-res masks), a
# four-block encoder with windows of 4 and two global blocks, prompt width 32.
TINY_SAM = dict(
    image_size=128,
    patch_size=8,
    width=64,
    depth=4,
    num_heads=4,
    window_size=4,
    global_attn_indexes=(1, 3),
    dim=32,
    mask_in_chans=8,
    decoder_heads=2,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
)
POLYP_PARTS = ("CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "Kvasir", "CVC-300")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(
        arg,
        choices=dict(sam=(_DEFAULT_SAM, *SAMS), prompt=PROMPTS, stage=STAGES),
        tiny=False,
        paper=False,
        sam="",
        prompt="box",
        stage="online",
    )
    if a.stage != "online" and not a.tiny:
        raise ValueError(f"config arg stage={a.stage} is a stage of the tiny recipe: add tiny")
    sam = a.sam or ("tiny" if a.tiny else "vit_h")
    c = ml_collections.ConfigDict()
    c.paper = "auxol"
    c.seed = 1234

    c.model = ml_collections.ConfigDict()
    c.model.sam = ml_collections.ConfigDict(
        # workdir: a radjax run of stage=sam whose newest checkpoint is the SAM to use
        dict(variant=sam, checkpoint=CHECKPOINTS[sam], workdir="", dtype="float32")
    )
    if sam == "tiny":
        c.model.sam.update(TINY_SAM)
    # milesial's U-Net as run.sh builds it: --bilinear, widths 64 .. 512
    c.model.unet = ml_collections.ConfigDict(dict(base=64, bilinear=True))

    # main.py's arguments (run.sh's values)
    c.online = ml_collections.ConfigDict(
        dict(
            prompt=a.prompt,
            queue_size=32,  # --nums
            crop_size=128,  # --crop_image_size
            lr=5e-4,
            weight_decay=5e-4,
            weighted_bce=False,  # True: the weighted BCE PraNet's loss meant (the code: mean)
            queue_policy="fifo",  # 'loss': replace the best-fitted entry (the paper's reading)
            interval=1,
            dice_gate=1.0,  # --dice_percent
            noise=0.0,
            noise_type="both",
            prompt_noise=0.0,
            alpha_max=1.0,  # --alpha_percent
            alpha_step=0.05,
            alpha_num=5,
            four_channel=True,
            pseudo_label=False,  # not in the code: SAM's crop as the label without feedback
            point_counted_twice=True,  # the code adds a point prompt's map twice to SAM alone
            seed=1234,
        )
    )
    if a.paper:
        c.online.update(weighted_bce=True, queue_policy="loss", point_counted_twice=False)

    c.data = ml_collections.ConfigDict(
        dict(
            root="TestDatasets",
            dataset="Polyp",
            parts=POLYP_PARTS,
            phantoms=ml_collections.ConfigDict(
                dict(enabled=False, images_per_part=40, seed=0, datasets=())
            ),
        )
    )
    c.checkpoint = ml_collections.ConfigDict(dict(every=50, keep=2))
    _trainer_fields(c)
    if sam == "tiny":  # SAM's input and low-res mask sides
        c.data.image_size = TINY_SAM["image_size"]
        c.data.low_res_size = 4 * TINY_SAM["image_size"] // TINY_SAM["patch_size"]
    if a.tiny:
        _tiny(c)
        if a.stage == "sam":
            _tiny_sam_stage(c)
    return c


def _trainer_fields(c: ml_collections.ConfigDict) -> None:
    """What ``experiments.train`` reads (only stage=sam trains; MedSAM's optimiser)."""
    c.data.image_size = 1024
    c.data.low_res_size = 256
    c.data.val_images = 8
    c.data.box_jitter = 0.0
    c.data.num_threads = 1
    c.train = ml_collections.ConfigDict(
        dict(
            batch_size=8,
            steps=1000,
            grad_accum=1,
            remat_policy="",
            log_every=25,
            eval_every=1000,
            eval_split="test",
        )
    )
    c.optim = ml_collections.ConfigDict(
        dict(
            name="adamw",
            lr=1e-4,
            weight_decay=0.01,
            warmup_ratio=0.0,
            schedule="constant",
            grad_clip=0.0,
            groups=(),
        )
    )
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, expert=1))
    c.eval = ml_collections.ConfigDict(dict(batch_size=8))


def _tiny(c: ml_collections.ConfigDict) -> None:
    c.data.root = "runs/data/auxol_phantoms"
    c.data.dataset = "BUSI"
    c.data.parts = ("benign", "malignant")
    c.data.phantoms.enabled = True
    c.checkpoint.every = 20
    # CPU-sized online update: the released U-Net (base 64) on 32 crops of 128 px takes
    # ~1 TFLOP a step, minutes per object on 2 cores; base 16 on 16 crops of 64 px: 0.27 s.
    c.model.unet.base = 16
    c.online.update(queue_size=16, crop_size=64)


def _tiny_sam_stage(c: ml_collections.ConfigDict) -> None:
    """The weak SAM: a short training on other phantoms (seed 1) of the first look of each
    dataset (the stream's benign part among them; its malignant look is new to SAM)."""
    c.data.root = "runs/data/auxol_sam_phantoms"
    c.data.dataset = ""  # parts name <dataset>/<part>
    c.data.parts = ("Polyp/ClinicDB", "GlaS/benign", "BUSI/benign")
    c.data.phantoms.update(seed=1, images_per_part=30, datasets=("Polyp", "GlaS", "BUSI"))
    c.data.box_jitter = 0.1
    # 60 steps: held-out box Dice 0.21 on its own phantoms, 0.91 / 0.19 on the stream's
    # benign / malignant parts (150 steps: 0.95 / 0.33, and AuxOL's gain on benign 1 point)
    c.train.update(batch_size=8, steps=60, eval_every=60)
    c.optim.update(lr=1e-3, warmup_ratio=0.05, schedule="cosine")
    c.checkpoint.update(every=60, keep=1)
    c.eval.batch_size = 16
