"""Models for the ONNX tests and benchmark, written in plain torch.

ResNet-18 and MobileNetV2 follow the layouts of the published architectures as torchvision
lays them out (ResNet-18: a 7x7/2 stem, 3x3/2 max pool, BasicBlocks [2, 2, 2, 2] with 1x1
strided downsampling shortcuts, global average pool, linear; MobileNetV2: inverted
residual blocks with ReLU6, expansion t, channels c, repeats n, first stride s per the
paper's table, a 1280-channel 1x1 head). torchvision itself is not used: its PyPI build
cannot be imported beside this torch build (its operator registration fails), so the
networks are defined here. Weights are random (seeded); batch-norm statistics are made
non-trivial so that folding them is tested.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride),
                                        BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _conv_bn(cin, cout, k, stride, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   _conv_bn(hidden, cout, 1, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion t, output channels c, repeats n, first stride s)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers, cin = [_conv_bn(3, 32, 3, 2)], 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn(cin, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class RecurrentNet(nn.Module):
    """A 2-layer LSTM or GRU over (T, N, F) sequences, then a linear read-out of every step."""

    def __init__(self, cell: str = "lstm", features: int = 8, hidden: int = 16,
                 outputs: int = 4):
        super().__init__()
        cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = cls(features, hidden, num_layers=2)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch-norm affine parameters and running statistics (so folding
    them changes the weights); the model is put in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return model.eval()


def build(name: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    model = {"resnet18": ResNet18, "mobilenet_v2": MobileNetV2,
             "lstm": lambda **a: RecurrentNet("lstm", **a),
             "gru": lambda **a: RecurrentNet("gru", **a)}[name](**kw)
    return randomize_bn(model, seed)


def to_onnx(model: nn.Module, example: torch.Tensor, opset: int = 17) -> bytes:
    """``torch.onnx.export`` (the TorchScript exporter, no onnxscript needed) to bytes.
    Without constant folding torch keeps the BatchNormalization nodes (its folding would
    merge them into the convolutions), so that the importer's folding is what is tested."""
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (example,), buf, opset_version=opset, dynamo=False,
                          do_constant_folding=False, input_names=["input"],
                          output_names=["output"])
    return buf.getvalue()


def torch_out(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()
