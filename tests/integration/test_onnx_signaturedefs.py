# mypy: disable-error-code="no-untyped-call,no-any-return,union-attr"
# (torch's own annotations, not ours)
"""An ONNX model whose names onnx2tf's SavedModel step rejects converts: edgeconv takes onnx2tf's own remedy.

A grouped convolution exported by torch.onnx (node names like ``/block/block.0/Conv``) makes onnx2tf stop with
"the OP name does not match the following pattern ... Please convert again with the `-osd` or
`--output_signaturedefs` option" (Hugging Face RegNet, Wav2Vec2 and HuBERT do the same). The worker reads that
advice, converts again with ``output_signaturedefs``, and the loader's line says so; a failure onnx2tf explains
only in its log gives that log's ERROR lines instead of "without a message".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from converter.reports.report import INT8_NAME
from converter.runtime.model import TFLiteModel
from converter.sources.load_onnx import toolkit_reason
from tests.integration.test_torch_source import MISSING, _convert_cli, _export_onnx, _float_ops, _onnx_env, _recipe

assert not MISSING
import torch  # noqa: E402
from torch import nn  # noqa: E402


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(torch.relu(self.stem(x))).mean((2, 3)))


def test_a_grouped_convolution_converts_with_onnx2tfs_own_remedy(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = _onnx_env(request)
    torch.manual_seed(0)
    model = Grouped().eval()
    x = np.random.default_rng(0).random((300, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x[200:])).numpy()
    np.savez(tmp_path / "cal.npz", x=x[:200])
    np.savez(tmp_path / "eval.npz", x=x[200:], y=want.argmax(1))
    source = _export_onnx(model, x[:1], tmp_path / "grouped.onnx")
    done, out = _convert_cli(tmp_path, _recipe(source, tmp_path / "cal.npz", tmp_path / "eval.npz", layout="nchw"), env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert "converted again with onnx2tf's --output_signaturedefs" in report["model"]["loader"]
    assert _float_ops(out / INT8_NAME) == []
    got = TFLiteModel(model_path=str(out / INT8_NAME)).predict(x[200:])[0].astype(np.float64)
    sqnr = 10 * np.log10(np.sum(want.astype(np.float64) ** 2) / np.sum((want - got) ** 2))
    assert sqnr > 25.0 and float(np.mean(got.argmax(1) == want.argmax(1))) >= 0.95, sqnr


def test_an_onnx2tf_failure_told_only_in_its_log_gives_its_error_lines() -> None:
    log = (
        "\x1b[31mERROR:\x1b[0m Generation of saved_model failed because the OP name does not match the following "
        "pattern. ^[A-Za-z0-9.][A-Za-z0-9_.\\\\/>-]*$\n\x1b[31mERROR:\x1b[0m /model/stages.2/Conv/kernel\n"
    )
    reason = toolkit_reason(log, "RuntimeError: onnx2tf gave up (exit 1) without a message")
    assert reason.startswith("Generation of saved_model failed because the OP name does not match"), reason
    assert "/model/stages.2/Conv/kernel" in reason
