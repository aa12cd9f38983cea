"""RP3D-Diag (RadDiag): multi-scan, long-tailed multi-label diagnosis. See README.md."""
