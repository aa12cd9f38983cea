"""AuxOL (qianxihaoyue/AuxOL): a frozen SAM and an auxiliary U-Net learnt online.

``python -m experiments.online --config configs/auxol.py:<args> --workdir W``. Arguments:

  ``tiny``           phantom stream (AuxOL's layout, ``radjax.papers.auxol.phantoms``) and
                     the tiny SAM of ``sam=tiny``; the paper default streams
                     ``TestDatasets/Polyp`` (the five polyp parts) with SAM ViT-H, run.sh.
  ``sam=``           ``vit_b`` | ``vit_l`` | ``vit_h`` | ``medsam`` (ViT-B, MedSAM's weights)
                     | ``tiny``; ``model.sam.checkpoint`` is the original segment-anything
                     ``.pth`` (or a transformers ``SamModel`` folder).
  ``prompt=``        ``box`` (default) | ``point``.

Everything else is a field: ``--config.online.interval=2``, ``--config.online.noise=0.1``,
``--config.online.queue_policy=loss``, ``--config.data.dataset=BUSI
--config.data.parts='("benign",)'``.
"""

from __future__ import annotations

import ml_collections

from configs.common import parse_arg

SAMS = ("vit_b", "vit_l", "vit_h", "medsam", "tiny")
PROMPTS = ("box", "point")
# run.sh's checkpoints (``tool.load_model``); MedSAM point prompts use
# medsam_point_prompt_flare22.pth, set ``model.sam.checkpoint`` for it.
CHECKPOINTS = {
    "vit_b": "checkpoints/sam_vit_b_01ec64.pth",
    "vit_l": "checkpoints/sam_vit_l_0b3195.pth",
    "vit_h": "checkpoints/sam_vit_h_4b8939.pth",
    "medsam": "checkpoints/medsam_vit_b.pth",
    "tiny": "",
}
POLYP_PARTS = ("CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "Kvasir", "CVC-300")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(
        arg,
        choices=dict(sam=SAMS, prompt=PROMPTS),
        tiny=False,
        sam="",
        prompt="box",
    )
    sam = a.sam or ("tiny" if a.tiny else "vit_h")
    c = ml_collections.ConfigDict()
    c.paper = "auxol"
    c.seed = 1234

    c.model = ml_collections.ConfigDict()
    c.model.sam = ml_collections.ConfigDict(
        dict(variant=sam, checkpoint=CHECKPOINTS[sam], dtype="float32")
    )
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
    if a.tiny:
        _tiny(c)
    return c


def _tiny(c: ml_collections.ConfigDict) -> None:
    c.data.root = "runs/data/auxol_phantoms"
    c.data.dataset = "BUSI"
    c.data.parts = ("benign", "malignant")
    c.data.phantoms.enabled = True
    c.checkpoint.every = 20
