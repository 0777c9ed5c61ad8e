"""A [1, 16, 16, 16] map from a Reshape, as PoolFormer's token mixer makes one at 32x32: onnx2tf guesses it wrong.

PyTorch exports ``GroupNorm(1, 16)`` as Reshape -> InstanceNormalization -> Reshape. onnx2tf decides per tensor
whether it is channel-last by comparing shapes, cannot tell where channels, height and width are all 16, takes
the Reshape's output (in ONNX order in its graph) as channel-last, and the average pool after it then pools over
channels and height. Its float model computes something else (the float check fails); converted again with
parameter replacements that make the guess true (``converter/sources/onnx_layout.py``) it matches PyTorch. The
zoo's PoolFormer, Swin and SegFormer at 32x32 are the same case (``tools/hub_models.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.test_onnx import float_against_pytorch


def _pool_mixer() -> Any:
    torch = pytest.importorskip("torch")
    from torch import nn

    class PoolMixer(nn.Module):
        """PoolFormer's block at its smallest: normalise, pool, subtract (a 16x16 map with 16 channels)."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.norm = nn.GroupNorm(1, 16)
            self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x: Any) -> Any:
            y = self.stem(x)
            z = self.norm(y)
            y = y + self.pool(z) - z
            return self.head(y).mean(dim=(2, 3))

    torch.manual_seed(0)
    return PoolMixer().eval()


def test_a_square_map_after_a_reshape_is_converted_again_and_matches_pytorch(onnx_env: Path, tmp_path: Path) -> None:
    loader, got, want = float_against_pytorch(_pool_mixer(), (1, 3, 32, 32), tmp_path)
    assert "onnx2tf parameter replacement" in loader, loader
    assert "make its layout guess true" in loader, loader
    np.testing.assert_allclose(got, want, atol=1e-4)  # without the second conversion: 0.4 dB against onnxruntime


def test_without_the_second_conversion_the_error_names_the_square_tensors(
    onnx_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a model gets where the corrections do not make onnx2tf's float model match: exit 3 naming the
    tensors whose layout onnx2tf cannot tell, and what to do."""
    from converter.errors import ConversionError

    monkeypatch.setenv("EDGECONV_ONNX_LAYOUT_RETRY", "off")
    with pytest.raises(ConversionError) as raised:
        float_against_pytorch(_pool_mixer(), (1, 3, 32, 32), tmp_path)
    said = str(raised.value)
    assert "cannot tell channels-first from channels-last" in said, said
    assert "[1, 16, 16, 16]" in said, said
    assert "convert it from PyTorch instead" in said, said


@pytest.mark.full  # one onnx2tf conversion
def test_an_lstm_whose_steps_equal_its_hidden_size_is_named_with_the_remedy(onnx_env: Path, tmp_path: Path) -> None:
    """onnx2tf's unrolled LSTM computes something else when the sequence length equals the hidden size (measured
    at 10, 12 and 16; 16 steps of hidden 12 converts faithfully): exit 3 naming the layer, both sizes and the way
    out, where the message could only say that some op was mis-converted."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from converter.errors import ConversionError

    class Last(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.head = nn.LSTM(4, 10, batch_first=True), nn.Linear(10, 3)

        def forward(self, x: Any) -> Any:
            return self.head(self.rnn(x)[0][:, -1])

    torch.manual_seed(0)
    with pytest.raises(ConversionError) as raised:
        float_against_pytorch(Last().eval(), (1, 10, 4), tmp_path)
    said = str(raised.value)
    assert "a recurrent layer whose sequence length equals its hidden size" in said, said
    assert ": 10 steps, hidden size 10)" in said, said
    assert "exported for another sequence length" in said and "convert it from PyTorch instead" in said, said
