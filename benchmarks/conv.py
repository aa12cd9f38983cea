"""Convolutions, measured: XLA's convolution, radjax's dispatcher (``radjax.nn.conv``) and
torch's (oneDNN) on the conv shapes of the benchmarked models, forward + backward, on this
machine, in one run. It is how the dispatcher's CPU rules were chosen.

Usage::

    python -m benchmarks.conv                 # benchmark shapes
    python -m benchmarks.conv --size tiny     # smoke size (the test suite's)

Each row times ``jax.grad`` of ``<conv(x, w), g>`` in x and w (one compiled program per
implementation) against torch's ``conv2d`` forward + ``backward(g)``, the median of
``--iters`` calls after two untimed ones. ``xla/radjax`` > 1: the dispatcher is faster than
XLA's convolution; ``torch/radjax`` > 1: faster than torch. ``count`` is how often the shape
occurs in the model's forward; the total weights each row by it. The dispatcher's gradients
are checked against XLA's convolution's before timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One channels-last 2D conv: batch, square input size, channels, square kernel, stride
    (padding k // 2, as every conv of these models) and its count in the model."""

    name: str
    batch: int
    size: int
    cin: int
    cout: int
    kernel: int
    stride: int
    count: int

    @property
    def out_size(self) -> int:
        return (self.size + 2 * (self.kernel // 2) - self.kernel) // self.stride + 1

    @property
    def flops(self) -> float:
        """Forward + backward multiply-adds x 2 (3 products of the forward's size)."""
        return 3 * 2 * self.batch * self.out_size**2 * self.cout * self.cin * self.kernel**2


# RP3D-Diag's ResNet-50 on the benchmark's 16 slices of 64x64 (benchmarks/rp3d_diag.py) and
# the AuxOL U-Net's 3x3 convs at its top two levels (benchmarks/auxol.py, 32 images of 128^2).
SHAPES = {
    "bench": (
        ConvShape("resnet stem 7x7/2", 16, 64, 3, 64, 7, 2, 1),
        ConvShape("resnet layer1 3x3", 16, 16, 64, 64, 3, 1, 3),
        ConvShape("resnet layer2 3x3/2", 16, 16, 128, 128, 3, 2, 1),
        ConvShape("resnet layer2 3x3", 16, 8, 128, 128, 3, 1, 3),
        ConvShape("resnet layer3 3x3/2", 16, 8, 256, 256, 3, 2, 1),
        ConvShape("resnet layer3 3x3", 16, 4, 256, 256, 3, 1, 5),
        ConvShape("resnet layer4 3x3/2", 16, 4, 512, 512, 3, 2, 1),
        ConvShape("resnet layer4 3x3", 16, 2, 512, 512, 3, 1, 2),
        ConvShape("resnet 1x1 256->64", 16, 16, 256, 64, 1, 1, 2),
        ConvShape("unet 3x3 4->64 @128", 32, 128, 4, 64, 3, 1, 1),
        ConvShape("unet 3x3 64 @128", 32, 128, 64, 64, 3, 1, 3),
        ConvShape("unet 3x3 128 @64", 32, 64, 128, 128, 3, 1, 4),
    ),
    "tiny": (
        ConvShape("3x3", 2, 8, 4, 8, 3, 1, 2),
        ConvShape("3x3/2", 2, 8, 4, 8, 3, 2, 1),
        ConvShape("3x3 on 2x2", 2, 2, 8, 8, 3, 1, 1),
    ),
}
_DN = ("NHWC", "HWIO", "NHWC")


def _operands(shape: ConvShape, seed: int = 0):
    rng = np.random.default_rng(seed)
    k = shape.kernel
    x = rng.standard_normal((shape.batch, shape.size, shape.size, shape.cin), np.float32)
    w = (
        rng.standard_normal((k, k, shape.cin, shape.cout), np.float32)
        / float(k * k * shape.cin) ** 0.5
    )
    g = rng.standard_normal((shape.batch, shape.out_size, shape.out_size, shape.cout), np.float32)
    return x, w, g


def jax_step(conv, shape: ConvShape):
    """jit(grad in (x, w) of <conv(x, w), g>) for a conv with lax's signature."""
    pad = [(shape.kernel // 2,) * 2] * 2
    strides = (shape.stride,) * 2

    def loss(x, w, g):
        return jnp.vdot(conv(x, w, strides, pad, dimension_numbers=_DN), g)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def torch_step(shape: ConvShape, x, w, g):
    """torch conv2d forward + backward(g) on NCHW copies of the same operands."""
    import torch

    xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
    wt = torch.tensor(w).permute(3, 2, 0, 1).contiguous().requires_grad_()
    gt = torch.tensor(g).permute(0, 3, 1, 2).contiguous()

    def step():
        xt.grad = wt.grad = None
        y = torch.nn.functional.conv2d(xt, wt, stride=shape.stride, padding=shape.kernel // 2)
        y.backward(gt)
        return xt.grad

    return step


def run(size: str, iters: int) -> list[dict]:
    """One dict per shape: name, GFLOP, count and median ms of 'xla', 'radjax', 'torch'."""
    from radjax.nn.conv import conv_general_dilated

    rows = []
    for shape in SHAPES[size]:
        x, w, g = _operands(shape)
        xj, wj, gj = map(jnp.asarray, (x, w, g))
        times, grads = {}, {}
        for name, conv in (("xla", jax.lax.conv_general_dilated), ("radjax", conv_general_dilated)):
            step = jax_step(conv, shape)
            grads[name] = step(xj, wj, gj)
            call = functools.partial(step, xj, wj, gj)
            times[name] = common.time_calls(call, iters=iters).median_s
        for ours, ref in zip(grads["radjax"], grads["xla"]):  # same gradients, summed reordered
            scale = float(jnp.abs(ref).max())
            np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5 * scale, err_msg=shape.name)
        step = torch_step(shape, x, w, g)
        times["torch"] = common.time_calls(step, iters=iters, sync=common.synchronous).median_s
        rows.append(dict(name=shape.name, gflop=shape.flops / 1e9, count=shape.count, **times))
    return rows


def _cells(name: str, gflop: str, count, t: dict, digits: int) -> list:
    """One table row: times in ms (``digits`` decimals) and the two ratios over radjax."""
    ms = [f"{t[k] * 1e3:.{digits}f}" for k in ("xla", "radjax", "torch")]
    return [
        name,
        gflop,
        count,
        *ms,
        f"{t['xla'] / t['radjax']:.2f}",
        f"{t['torch'] / t['radjax']:.2f}",
    ]


def table(rows: list[dict]) -> str:
    body = [_cells(r["name"], f"{r['gflop']:.3f}", r["count"], r, 2) for r in rows]
    total = {k: sum(r[k] * r["count"] for r in rows) for k in ("xla", "radjax", "torch")}
    body.append(_cells("total (x count)", "", "", total, 1))
    headers = ["conv (fwd + bwd)", "GFLOP", "count", "xla ms", "radjax ms", "torch ms"]
    return common.format_table([*headers, "xla/radjax", "torch/radjax"], body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=tuple(SHAPES), default="bench")
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args(argv)
    import torch

    threads = common.cpu_threads()
    torch.set_num_threads(threads)
    print(f"machine: {common.machine_kind()}; jax {jax.__version__}")
    print(table(run(args.size, args.iters)))


if __name__ == "__main__":
    main()
