"""Deterministic synthetic datasets written in the original on-disk formats.

Each module writes one format (``rp3d``: RP3D-DiagDS case JSON + ``.npy`` scans) so that the
real readers in ``radjax.data.formats`` are what tests, demos and tiny configs exercise.
The phantoms are learnable: labels follow from what is drawn, and the text says what and where.
"""
from radjax.data.phantoms.rp3d import write_rp3d_phantoms

__all__ = ["write_rp3d_phantoms"]
