"""The parity harness shared by the tests: one relative error and one assertion.

``rel_err`` is the error every parity test reports: the largest absolute difference
relative to the largest absolute reference value, computed in float64 so that the
measurement itself adds no f32 rounding.
"""

import numpy as np


def _as_f64(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, np.float64)


def rel_err(got, want) -> float:
    """max |got - want| / max |want| (float64; shapes must agree)."""
    got, want = _as_f64(got), _as_f64(want)
    if got.shape != want.shape:
        raise ValueError(f"shape mismatch: got {got.shape}, want {want.shape}")
    scale = np.abs(want).max()
    if scale == 0:
        raise ValueError("rel_err of an all-zero reference is undefined")
    return float(np.abs(got - want).max() / scale)


def norm_rel_err(got, want) -> float:
    """||got - want||_2 / ||want||_2 over all entries (float64; shapes must agree)."""
    got, want = _as_f64(got), _as_f64(want)
    if got.shape != want.shape:
        raise ValueError(f"shape mismatch: got {got.shape}, want {want.shape}")
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def assert_close(got, want, tol: float = 1e-5, what: str = "", *, norm: bool = False) -> float:
    """Asserts rel_err(got, want) < tol (norm_rel_err with ``norm=True``); returns it."""
    err = (norm_rel_err if norm else rel_err)(got, want)
    kind = "norm rel err" if norm else "rel err"
    assert err < tol, f"{what + ': ' if what else ''}{kind} {err:.3e} >= tol {tol:.1e}"
    return err
