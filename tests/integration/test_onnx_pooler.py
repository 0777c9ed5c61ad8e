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

from converter.runtime.model import TFLiteModel
from converter.sources.load import load_model
from tests.integration.test_onnx import _export, _run_tflite


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
    import torch

    module = _efficientnet_ends()
    _export(module, (1, 3, 16, 16), tmp_path / "m.onnx")
    loaded = load_model(tmp_path / "m.onnx")
    assert "auto_pad VALID written as zero pads on 1 node" in loaded.loader, loaded.loader
    assert "1 AveragePool over the whole input as GlobalAveragePool" in loaded.loader, loaded.loader
    model = TFLiteModel(model_content=loaded.float_tflite)
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    got = np.concatenate([_run_tflite(model, np.moveaxis(row[None], 1, -1)) for row in x])
    np.testing.assert_allclose(got, want, atol=1e-5)  # dividing by the window's area instead: 64x smaller
