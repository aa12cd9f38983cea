"""PyTorch reference of AuxOL's auxiliary U-Net (``Nets/Unet/unet_{model,parts}.py`` of
qianxihaoyue/AuxOL, milesial's Pytorch-UNet with InstanceNorm) and its training loss
(``tool.structure_loss``, PraNet's), written from the original's description in plain
``torch.nn`` for ``benchmarks/auxol.py``. Verified against the golden outputs of the original
(``tests/golden/data/auxol_unet.npz``) by ``tests/benchmarks/test_bench_auxol_smoke.py``.

Layout is the original's, channels-first: ``UNet(x)``: x (B, in_channels, H, W) -> logits
(B, n_classes, H, W). Module names (and so ``state_dict`` keys) are the original's, which
``radjax.papers.auxol.convert.from_auxol_unet`` reads.
"""

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Module):
    """[conv 3x3 (padding 1, no bias) -> InstanceNorm (no affine) -> ReLU] x 2:
    (B, cin, H, W) -> (B, cout, H, W). Sequential indices 0 and 3 are the convs."""

    def __init__(self, cin, cout, mid=None):
        super().__init__()
        mid = mid or cout
        self.double_conv = nn.Sequential(
            nn.Conv2d(cin, mid, kernel_size=3, padding=1, bias=False),
            nn.InstanceNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, kernel_size=3, padding=1, bias=False),
            nn.InstanceNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    """Max-pool 2 (floor) -> DoubleConv: (B, cin, H, W) -> (B, cout, H // 2, W // 2)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(cin, cout))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Upsample x (bilinear x2 with align_corners=True, or a 2x2 stride-2 transposed conv),
    pad it to the skip's (H, W) (``diff // 2`` before, the rest after), concat [skip, up] on
    channels, DoubleConv (mid = cin // 2 with bilinear): -> (B, cout, H, W)."""

    def __init__(self, cin, cout, bilinear=True):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(cin, cout, cin // 2)
        else:
            self.up = nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(cin, cout)

    def forward(self, x, skip):
        x = self.up(x)
        dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Module):
    """Conv 1x1 with bias: (B, cin, H, W) -> (B, n_classes, H, W)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class UNet(nn.Module):
    """``UNet(n_channels, n_classes, bilinear)`` with widths ``base`` x (1, 2, 4, 8, 16 //
    factor) (the original fixes base = 64; factor 2 with bilinear)."""

    def __init__(self, n_channels=4, n_classes=1, bilinear=True, base=64):
        super().__init__()
        c, factor = base, 2 if bilinear else 1
        self.inc = DoubleConv(n_channels, c)
        self.down1 = Down(c, 2 * c)
        self.down2 = Down(2 * c, 4 * c)
        self.down3 = Down(4 * c, 8 * c)
        self.down4 = Down(8 * c, 16 * c // factor)
        self.up1 = Up(16 * c, 8 * c // factor, bilinear)
        self.up2 = Up(8 * c, 4 * c // factor, bilinear)
        self.up3 = Up(4 * c, 2 * c // factor, bilinear)
        self.up4 = Up(2 * c, c, bilinear)
        self.outc = OutConv(c, n_classes)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)


def structure_loss(logits, masks):
    """``tool.structure_loss`` as the released code computes it, () from logits and masks
    (B, C, H, W), masks in {0, 1}: the mean BCE over the whole batch (``reduce='none'`` is the
    legacy, truthy ``reduce`` flag, so the weight map cancels) + the per-map weighted IoU
    (weights 1 + 5 |avg_pool31(mask) - mask|, zero padding counted) averaged over (B, C)."""
    weit = 1 + 5 * torch.abs(F.avg_pool2d(masks, kernel_size=31, stride=1, padding=15) - masks)
    bce = F.binary_cross_entropy_with_logits(logits, masks)
    p = torch.sigmoid(logits)
    inter = (p * masks * weit).sum(dim=(2, 3))
    union = ((p + masks) * weit).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return bce + wiou.mean()
