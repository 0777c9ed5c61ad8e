"""EfficientNet's padding and pooler from ONNX: what onnx2tf (and onnxruntime) get wrong, mended before onnx2tf.

Hugging Face's EfficientNet pads with ``nn.ZeroPad2d`` before a ``Conv2d(padding="valid")`` and pools with
``nn.AvgPool2d(hidden_dim, ceil_mode=True)``. Exported, the first is a Pad and a Conv with ``auto_pad="VALID"``,
which onnx2tf's onnxsim step folds into one Conv that keeps VALID, so the padding was dropped (the next depthwise
conv failed on a map one row short); the second is an AveragePool whose window exceeds the map, which onnx2tf and
onnxruntime divide by the window's area where PyTorch averages the map. The model here has both; its float
.tflite is compared with PyTorch, not onnxruntime. The zoo model is ``efficientnet`` in ``tools/hub_models.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.test_onnx import float_against_pytorch


def _efficientnet_ends() -> Any:
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.ZeroPad2d((0, 1, 0, 1)),
        nn.Conv2d(3, 8, 3, stride=2, padding="valid"),
        nn.ReLU(),
        nn.AvgPool2d(64, ceil_mode=True),  # a 64 window over an 8x8 map
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


def test_padding_and_whole_window_pool_match_pytorch(onnx_env: Path, tmp_path: Path) -> None:
    loader, got, want = float_against_pytorch(_efficientnet_ends(), (1, 3, 16, 16), tmp_path)
    assert "auto_pad VALID written as zero pads on 1 node" in loader, loader
    assert "1 AveragePool over the whole input as GlobalAveragePool" in loader, loader
    np.testing.assert_allclose(got, want, atol=1e-5)  # dividing by the window's area instead: 64x smaller
