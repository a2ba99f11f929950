"""Reference torch.nn models of the bundled CIFAR-size nets, written by hand the way PyTorch
code writes them (not generated from our specs), so their parameter counts, shapes,
multiply-adds and outputs can prove ours.

Importing this module needs torch; the tests that use it importorskip torch first.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """ResNet's pair of 3x3 convs, the ReLU after the addition (He et al. 2016, fig. 2).

    Where the block halves the size and doubles the depth, the shortcut is option A (a
    stride-2 subsample padded with zero channels, no parameters: the paper's CIFAR nets)
    or option B (a 1x1 stride-2 conv + batchnorm, as torchvision's ImageNet ResNets)."""

    def __init__(self, planes_in: int, planes: int, stride: int, option: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(planes_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        self.zero_channels = 0
        if stride != 1 or planes_in != planes:
            if option == "B":
                self.downsample = nn.Sequential(
                    nn.Conv2d(planes_in, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
            else:
                self.zero_channels = (planes - planes_in) // 2

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            return self.downsample(x)
        if self.zero_channels:
            z = self.zero_channels
            return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, z, z))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for CIFAR-10 (He et al. 2016, section 4.2): 3x3 conv 16, three stages of
    3 blocks with 16, 32 and 64 filters, global average pooling, fc 10."""

    def __init__(self, option: str = "B", num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, 1, option)
        self.layer2 = self._stage(16, 32, 2, option)
        self.layer3 = self._stage(32, 64, 2, option)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(planes_in: int, planes: int, stride: int, option: str) -> nn.Sequential:
        return nn.Sequential(BasicBlock(planes_in, planes, stride, option),
                             BasicBlock(planes, planes, 1, option),
                             BasicBlock(planes, planes, 1, option))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def cifar_vgg_bn() -> nn.Sequential:
    """The VGG-style CIFAR-10 net with batchnorm, as torchvision writes VGG-BN: features
    (conv-bn-relu x5 with 32-64-128 filters, a 2x2/2 max pool after each width), then
    the classifier (fc 256, relu, dropout, fc 10)."""

    def conv_bn_relu(d_in: int, d_out: int) -> list[nn.Module]:
        return [nn.Conv2d(d_in, d_out, 3, padding=1, bias=False), nn.BatchNorm2d(d_out),
                nn.ReLU()]

    features = nn.Sequential(*conv_bn_relu(3, 32), *conv_bn_relu(32, 32), nn.MaxPool2d(2),
                             *conv_bn_relu(32, 64), *conv_bn_relu(64, 64), nn.MaxPool2d(2),
                             *conv_bn_relu(64, 128), nn.MaxPool2d(2))
    classifier = nn.Sequential(nn.Linear(4 * 4 * 128, 256), nn.ReLU(), nn.Dropout(0.5),
                               nn.Linear(256, 10))
    return nn.Sequential(OrderedDict(features=features, flatten=nn.Flatten(),
                                     classifier=classifier))


# ------------------------------------------------------------------ names: torch -> cnncli

_RESNET_SHORTCUT = {"downsample.0": "shortcut.conv1", "downsample.1": "shortcut.bn1"}


def resnet20_name(torch_name: str) -> str:
    """`layer2.0.downsample.0.weight` -> `res4.shortcut.conv1.weight`: cnncli numbers the
    residual blocks res1..res9 through the stages; the stem and fc keep their roles."""
    m = re.fullmatch(r"layer(\d)\.(\d)\.(.+)", torch_name)
    if m is None:
        return "fc1." + torch_name[3:] if torch_name.startswith("fc.") else torch_name
    stage, block, rest = int(m[1]), int(m[2]), m[3]
    for theirs, ours in _RESNET_SHORTCUT.items():
        rest = rest.replace(theirs, ours)
    return f"res{3 * (stage - 1) + block + 1}.{rest}"


def sequential_names(model: nn.Module) -> dict[str, str]:
    """For a plain chain (cifar_vgg_bn): torch's module path -> cnncli's automatic name,
    counting each type in order as cnncli does (conv1, bn1, ..., fc1, fc2)."""
    prefix = {nn.Conv2d: "conv", nn.BatchNorm2d: "bn", nn.Linear: "fc"}
    counts: dict[str, int] = {}
    names = {}
    for path, module in model.named_modules():
        kind = prefix.get(type(module))
        if kind is not None:
            counts[kind] = counts.get(kind, 0) + 1
            names[path] = f"{kind}{counts[kind]}"
    return names


def state_in_cnncli_names(model: nn.Module, rename) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """The model's parameters and running statistics under cnncli's names (PyTorch's
    num_batches_tracked has no counterpart: cnncli keeps no step count per layer)."""
    return {rename(k): v for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def vgg_rename(model: nn.Module):  # type: ignore[no-untyped-def]
    names = sequential_names(model)

    def rename(key: str) -> str:
        path, _, entry = key.rpartition(".")
        return f"{names[path]}.{entry}"

    return rename


# ------------------------------------------------------------------ multiply-adds

def _out(size: int, conv: nn.Conv2d | nn.MaxPool2d, axis: int) -> int:
    """PyTorch's output size: floor((size + 2p - dilation*(k-1) - 1)/s) + 1."""

    def pick(v):  # type: ignore[no-untyped-def]
        return v[axis] if isinstance(v, tuple) else v

    k, s, p, d = (pick(conv.kernel_size), pick(conv.stride), pick(conv.padding),
                  pick(conv.dilation))
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def macs(module: nn.Module, h: int, w: int) -> tuple[int, int, int]:
    """(multiply-adds per image, h, w after the module), from the modules' own settings:
    a conv costs its weights times its output positions, a linear layer its weights;
    batchnorm, ReLU, pools, dropout and additions cost none (the convention of published
    figures). No forward pass, no hooks."""
    if isinstance(module, nn.Conv2d):
        h, w = _out(h, module, 0), _out(w, module, 1)
        return module.weight.numel() * h * w, h, w
    if isinstance(module, nn.Linear):
        return module.weight.numel(), 1, 1
    if isinstance(module, nn.MaxPool2d):
        return 0, _out(h, module, 0), _out(w, module, 1)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return 0, 1, 1
    if isinstance(module, (nn.BatchNorm2d, nn.ReLU, nn.Dropout, nn.Flatten)):
        return 0, h, w
    if isinstance(module, BasicBlock):
        first, oh, ow = macs(module.conv1, h, w)
        second, oh, ow = macs(module.conv2, oh, ow)
        # the shortcut sees the block's input; option A's subsample costs nothing
        shortcut = macs(module.downsample, h, w)[0] if module.downsample is not None else 0
        return first + second + shortcut, oh, ow
    if isinstance(module, (nn.Sequential, ResNet20)):
        total = 0
        for child in module.children():
            n, h, w = macs(child, h, w)
            total += n
        return total, h, w
    raise TypeError(type(module))
