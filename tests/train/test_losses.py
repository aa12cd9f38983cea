"""Shared losses against direct PyTorch computations of the RP3D-Diag originals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radjax.papers.rp3d_diag.losses import symmetric_kl_gaussian_key_slice
from radjax.train import losses


def test_sigmoid_bce_clamped_matches_torch(torch):
    F = torch.nn.functional
    r = np.random.default_rng(0)
    logits = (r.normal(size=(3, 7)) * 40).astype(np.float32)  # some beyond the ±60 clamp
    logits[0, 0], logits[1, 1] = 300.0, -250.0
    labels = (r.random((3, 7)) < 0.4).astype(np.float32)
    want = F.binary_cross_entropy_with_logits(
        torch.tensor(logits).clamp(-60, 60), torch.tensor(labels)
    )
    got = losses.sigmoid_bce_clamped(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(got, want.item(), rtol=1e-6)


def _torch_kl_with_gaussian(pred, centers, cutoffs, length, std):
    """RP3D's KLwithGaussian on the selected rows, written out in torch."""
    import torch

    F = torch.nn.functional
    x = torch.arange(length).repeat(len(centers), 1).float()
    labels = torch.exp(-0.5 * ((x - centers[:, None]) / std) ** 2)
    labels = torch.where(x < cutoffs[:, None], labels, torch.zeros_like(labels))
    labels = (labels / labels.sum(dim=1, keepdim=True)).clamp(min=1e-5)
    pred = F.softmax(pred, dim=1).clamp(min=1e-5)
    return (
        F.kl_div(pred.log(), labels, reduction="batchmean")
        + F.kl_div(labels.log(), pred, reduction="batchmean")
    ) / 2


def test_symmetric_kl_matches_torch_on_counted_scans(torch):
    r = np.random.default_rng(1)
    s, length, std = 6, 8, 8 / 16
    n_valid = np.array([8, 3, 5, 0, 6, 2])
    marks = (np.arange(length) < n_valid[:, None]).astype(np.float32)
    scores = r.normal(size=(s, length)).astype(np.float32) * 3
    scores[marks == 0] = -1e9  # as the slice attention leaves them
    keys = np.array([2, 1, 4, 0, -1, 1])  # scan 3 has no slices, scan 4 no key
    valid = np.array([True, True, True, True, True, False])  # scan 5 is a padding scan
    counted = np.array([0, 1, 2])
    want = _torch_kl_with_gaussian(
        torch.tensor(scores[counted]),
        torch.tensor(keys[counted]),
        torch.tensor(n_valid[counted]),
        length,
        std,
    )
    got = symmetric_kl_gaussian_key_slice(
        jnp.asarray(scores),
        jnp.asarray(keys),
        jnp.asarray(marks),
        length,
        std,
        valid=jnp.asarray(valid),
    )
    np.testing.assert_allclose(got, want.item(), rtol=1e-5)


def test_symmetric_kl_without_counted_scans_is_zero_with_finite_grad():
    scores = jnp.zeros((2, 4))
    marks = jnp.ones((2, 4))
    keys = jnp.array([-1, -1])
    value, grad = jax.jit(
        jax.value_and_grad(symmetric_kl_gaussian_key_slice), static_argnums=(3, 4)
    )(scores, keys, marks, 4, 0.25)
    assert value == 0.0 and np.all(np.isfinite(grad))


def test_symmetric_kl_checks_length():
    with pytest.raises(ValueError, match="length"):
        symmetric_kl_gaussian_key_slice(
            jnp.zeros((1, 4)), jnp.zeros(1, int), jnp.ones((1, 4)), 5, 1.0
        )
