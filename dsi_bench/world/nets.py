"""The world's classifiers: small convolutional nets over 32 px images with 1000-way ImageNet outputs.

Each net has a 10-way head over :data:`~dsi_bench.world.scene.WORLD_CLASSES`; :class:`ImageNetHead`
scatters it into ImageNet's 1000 classes (every other class gets a very low logit), so the harness,
the leaderboard and any ImageNet tool read the world's classifiers like any ImageNet classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from .scene import SIZE, WORLD_CLASSES

__all__ = ["ARCHITECTURES", "ImageNetHead", "build_net", "world_transform"]

#: The logit every ImageNet class outside the world gets.
OUTSIDE_LOGIT = -1e4


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Five 3x3 conv blocks (24-48-96 channels), two 2x poolings, global average pooling."""

    def __init__(self, num_classes: int = len(WORLD_CLASSES), width: int = 24):
        super().__init__()
        w = width
        self.features = nn.Sequential(_block(3, w), _block(w, w), nn.MaxPool2d(2), _block(w, 2 * w),
                                      _block(2 * w, 2 * w), nn.MaxPool2d(2), _block(2 * w, 4 * w),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class _Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if stride == 1 and cin == cout else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class TinyResNet(nn.Module):
    """A ResNet in miniature: a stem and three residual stages (16-32-64 channels)."""

    def __init__(self, num_classes: int = len(WORLD_CLASSES), width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(_block(3, w), _Residual(w, w, 1), _Residual(w, 2 * w, 2),
                                      _Residual(2 * w, 4 * w, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


#: Architectures by name (recorded in each classifier's file).
ARCHITECTURES = {"cnn": SmallCNN, "resnet": TinyResNet}


def build_net(architecture: str) -> nn.Module:
    return ARCHITECTURES[architecture]()


class ImageNetHead(nn.Module):
    """A 10-way world net as a 1000-way ImageNet classifier."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("targets", torch.tensor([c.index for c in WORLD_CLASSES]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        out = logits.new_full((logits.shape[0], 1000), OUTSIDE_LOGIT)
        return out.index_copy(1, self.targets.to(logits.device), logits)


#: Per-channel normalisation of the world's classifiers' inputs.
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _rgb(image):
    return image.convert("RGB")


def world_transform():
    """PIL image (any size) -> the tensor the world's classifiers take: RGB, 32 px, normalised."""
    from torchvision import transforms

    return transforms.Compose([transforms.Lambda(_rgb),
                               transforms.Resize((SIZE, SIZE)), transforms.ToTensor(),
                               transforms.Normalize(MEAN, STD)])
