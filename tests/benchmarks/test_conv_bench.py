"""``benchmarks.conv``: the per-shape conv comparison runs at tiny size, checks the
dispatcher's gradients against XLA's convolution and tables every shape. No timing
assertions."""

from benchmarks import conv


def test_every_tiny_shape_is_timed_and_tabled():
    rows = conv.run("tiny", iters=1)
    assert [r["name"] for r in rows] == [s.name for s in conv.SHAPES["tiny"]]
    for r in rows:
        assert min(r["xla"], r["radjax"], r["torch"]) > 0, r
    text = conv.table(rows)
    assert all(s.name in text for s in conv.SHAPES["tiny"]) and "total (x count)" in text


def test_flops_count_the_forward_and_both_gradients():
    shape = conv.ConvShape("s", 2, 8, 4, 8, 3, 2, 1)
    assert shape.out_size == 4
    assert shape.flops == 3 * 2 * 2 * 16 * 8 * 4 * 9
