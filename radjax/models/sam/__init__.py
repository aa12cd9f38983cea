"""Segment Anything (facebookresearch/segment-anything) in radjax, channels-last.

``image_encoder``: the ViT-B/L/H image encoder (windowed attention with decomposed relative
positions, global-attention blocks, conv neck). ``prompt_encoder``, ``two_way_transformer`` and
``mask_decoder`` are written for any spatial rank (2D for SAM / MedSAM, 3D for SegVol).
``sam``: the whole model with SAM's pre- and post-processing. Checkpoints (the original key
names and transformers' ``SamModel``) are read by ``radjax.convert.sam``."""
