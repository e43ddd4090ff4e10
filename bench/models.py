"""The benchmark models built in the DSL, defined once for every script in bench/."""
from __future__ import annotations

import irgraph.frontend as fe
from irgraph.frontend import nn
from irgraph.frontend.layers import BatchNorm2d, Conv2d, MaxPool2d


def mlp():
    """784-512-256-10 with ReLUs (seeded)."""
    fe.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def lenet():
    """LeNet-style CNN with batch norm, 1x28x28 inputs (seeded)."""
    fe.manual_seed(0)
    return nn.Sequential(Conv2d(1, 6, 5, padding=2), BatchNorm2d(6), nn.ReLU(),
                         MaxPool2d(2), Conv2d(6, 16, 5), BatchNorm2d(16), nn.ReLU(),
                         MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
                         nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
