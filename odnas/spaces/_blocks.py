"""Torch building blocks for ``mobile-cnn`` (kept apart so the space module imports no torch)."""

from __future__ import annotations

from torch import nn


def _act(name: str) -> nn.Module:
    return nn.Hardswish() if name == "hardswish" else nn.ReLU()


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int, act: str | None) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(_act(act))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.relu = nn.ReLU()
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class Block(nn.Module):
    """Depthwise-separable block (expand == 1) or inverted residual (expand > 1)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, se: bool, act: str) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, mid, 1, 1, 1, act))
        layers.append(_conv_bn(mid, mid, kernel, stride, mid, act))
        if se:
            layers.append(SqueezeExcite(mid))
        layers.append(_conv_bn(mid, cout, 1, 1, 1, None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class MobileCNN(nn.Module):
    def __init__(self, in_channels: int, input_hw: int, stem_width: int, stages: list[dict],
                 activation: str, num_classes: int) -> None:
        super().__init__()
        # Large inputs (MNIST 28x28) are halved by the stem; 8x8 digits are not.
        stem_stride = 2 if input_hw >= 16 else 1
        self.stem = _conv_bn(in_channels, stem_width, 3, stem_stride, 1, activation)
        blocks: list[nn.Module] = []
        cin = stem_width
        for st in stages:
            for j in range(st["depth"]):
                blocks.append(Block(cin, st["width"], st["kernel"], st["stride"] if j == 0 else 1,
                                    st["expand"], st["se"], activation))
                cin = st["width"]
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.head(self.flatten(self.pool(self.blocks(self.stem(x)))))
