# mypy: disable-error-code="no-untyped-call,no-any-return,union-attr"
# (torch's own annotations, not ours: untyped backward(), Any-returning modules, Optional buffers)
"""PyTorch models for the PyTorch and ONNX sources' tests and ``tools/bench_torch_onnx.py``.

Each case is the model (trained a few seconds on scikit-learn's digits, or seeded), its calibration and
evaluation inputs as PyTorch takes them (NCHW for images), the evaluation labels and one example input.
Needs torch (the ``[torch]`` extra) and scikit-learn (the ``[test]`` extra).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

CASES = ("cnn", "mobilenet_block", "lstm", "transformer")


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(x.flatten(1))


class InvertedResidual(nn.Module):
    """A MobileNetV2 block: expand 1x1, depthwise 3x3, project 1x1, residual; then a classifier head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6())
        self.block = nn.Sequential(
            nn.Conv2d(16, 64, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU6(),
            nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU6(),
            nn.Conv2d(64, 16, 1, bias=False),
            nn.BatchNorm2d(16),
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.block(x)
        return self.head(x.mean(dim=(2, 3)))


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 32, batch_first=True)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer(self.embed(x)).mean(dim=1))


def case(name: str) -> tuple[nn.Module, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The model, calibration x, evaluation x and labels, as PyTorch takes them (NCHW for images)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if name in ("cnn", "lstm", "transformer"):
        images, labels = digits()
        if name == "cnn":
            x = images[:, None]  # [N, 1, 8, 8]: PyTorch's NCHW, as a PyTorch user stores it
            model = train(SmallCNN(), x[:1200], labels[:1200], 60)
        else:  # the 8 rows of each image as a sequence of 8 steps
            model = train(LSTMClassifier() if name == "lstm" else Encoder(), images[:1200], labels[:1200], 60)
            x = images
        return model, x[:200], x[1200:], labels[1200:], x[:1]
    model = InvertedResidual().eval()
    with torch.no_grad():  # give the batch norms non-trivial statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    x = rng.uniform(0, 1, (400, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x[200:])).argmax(1).numpy()  # labels: PyTorch's own answer (agreement)
    return model, x[:200], x[200:], y, x[:1]
