"""The CIFAR variants of VGG11, ResNet34 and DenseNet121 used in the AdaBelief/HVAdam experiments.

The usual CIFAR adaptations (32x32 inputs): VGG11 with batch norm and a single linear head;
ResNet with a 3x3 stem and no max-pool; DenseNet-BC with a 3x3 stem, growth 32, reduction 0.5.
`width` scales every channel count (1.0 is the published model; smaller values exist so the
tests can train them on a CPU in seconds).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MODELS = ("vgg11", "resnet34", "densenet121")


def _ch(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class VGG(nn.Module):
    CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in self.CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = _ch(int(item), width)
                layers += [
                    nn.Conv2d(channels, out, 3, padding=1),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                ]
                channels = out
        layers.append(nn.AvgPool2d(kernel_size=1, stride=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...], num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        base = _ch(64, width)
        self.conv1 = nn.Conv2d(3, base, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        stages: list[nn.Module] = []
        in_planes = base
        for i, count in enumerate(blocks):
            planes = base * 2**i
            for j in range(count):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*stages)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(out, 1)  # = avg_pool2d(out, 4) on 32x32 inputs
        return self.linear(torch.flatten(out, 1))


class DenseBottleneck(nn.Module):
    def __init__(self, in_planes: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    def __init__(
        self,
        blocks: tuple[int, ...],
        num_classes: int,
        growth: int = 32,
        reduction: float = 0.5,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        growth = _ch(growth, width)
        planes = 2 * growth
        self.conv1 = nn.Conv2d(3, planes, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, count in enumerate(blocks):
            for _ in range(count):
                stages.append(DenseBottleneck(planes, growth))
                planes += growth
            if i < len(blocks) - 1:
                out = math.floor(planes * reduction)
                stages.append(Transition(planes, out))
                planes = out
        self.dense = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.dense(self.conv1(x))))
        out = F.adaptive_avg_pool2d(out, 1)  # = avg_pool2d(out, 4) on 32x32 inputs
        return self.linear(torch.flatten(out, 1))


def build_model(name: str, *, num_classes: int, width: float = 1.0) -> nn.Module:
    """A CIFAR model by name ("vgg11", "resnet34", "densenet121")."""
    if name == "vgg11":
        return VGG(num_classes, width)
    if name == "resnet34":
        return ResNet((3, 4, 6, 3), num_classes, width)
    if name == "densenet121":
        return DenseNet((6, 12, 24, 16), num_classes, growth=32, width=width)
    raise ValueError(f"unknown CIFAR model {name!r}; known: {', '.join(MODELS)}")
