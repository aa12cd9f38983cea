"""PyTorch references of RP3D-Diag v1's ResNets (the original ``resnet3D`` 3D ResNet-18
and the shared ``resnet34_Fuse`` encoder), written from the original's description for
tests/convert/test_resnet_convert.py: there is no installable original module."""

import torch
from torch import nn


class TorchBlock(nn.Module):
    """Basic residual block over Conv{2,3}d, with the original's padding = dilation."""

    def __init__(self, cin, planes, stride, dilation, shortcut, nd):
        super().__init__()
        conv, bn = (nn.Conv2d, nn.BatchNorm2d) if nd == 2 else (nn.Conv3d, nn.BatchNorm3d)
        self.conv1 = conv(cin, planes, 3, stride, dilation, dilation, bias=False)
        self.bn1 = bn(planes)
        self.conv2 = conv(planes, planes, 3, 1, dilation, dilation, bias=False)
        self.bn2 = bn(planes)
        self.downsample = (
            nn.Sequential(conv(cin, planes, 1, stride, bias=False), bn(planes))
            if shortcut
            else None
        )

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + shortcut)


class TorchMedicalNet3D(nn.Module):
    """The v1 3D ResNet-18 on (B, 3, H, W, D); strides in the original's (H, W, D) order."""

    LAYERS = {
        16: [((1, 1, 1), 1), ((2, 2, 2), 1), ((2, 2, 2), 2), ((2, 2, 1), 4)],
        32: [((1, 1, 1), 1), ((2, 2, 2), 1), ((2, 2, 2), 2), ((2, 2, 2), 4)],
    }

    def __init__(self, depth, width):
        super().__init__()
        self.conv1 = nn.Conv3d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.maxpool = nn.MaxPool3d(3, 2, 1)
        cin = width
        for i, (stride, dilation) in enumerate(self.LAYERS[depth]):
            planes = width * 2**i
            setattr(
                self,
                f"layer{i + 1}",
                nn.Sequential(
                    TorchBlock(cin, planes, stride, dilation, True, 3),
                    TorchBlock(planes, planes, 1, dilation, False, 3),
                ),
            )
            cin = planes

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x.squeeze(-1)  # (B, C, h, w)


class TorchFuse(nn.Module):
    """``resnet34_Fuse``'s stages: 1-3 at ``width``, stride 1; 4 at ``vis_dim``, stride 2."""

    def __init__(self, cin, width, vis_dim, layers):
        super().__init__()
        for i, n in enumerate(layers):
            planes, stride = (vis_dim, 2) if i == 3 else (width, 1)
            blocks = [TorchBlock(cin, planes, stride, 1, stride != 1 or cin != planes, 2)]
            blocks += [TorchBlock(planes, planes, 1, 1, False, 2) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = planes
        self.fc = nn.Linear(vis_dim, 7)

    def forward(self, x):
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x.mean((2, 3))
