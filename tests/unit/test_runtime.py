"""The device-side runtime: quantize/dequantize arithmetic and a TensorFlow-free import."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from converter.runtime.model import TensorInfo, dequantize, quantize
from tests.conftest import ROOT


def _info(dtype: str, scale: float | None, zp: int | None) -> TensorInfo:
    return TensorInfo("t", 0, (1, 4), dtype, scale, zp)


def test_quantize_known_values() -> None:
    info = _info("int8", 0.5, -3)
    q = quantize(np.array([0.0, 1.0, -1.24, 1000.0, -1000.0]), info)
    assert q.dtype == np.int8
    assert q.tolist() == [-3, -1, -5, 127, -128]
    np.testing.assert_allclose(dequantize(q, info), [0.0, 1.0, -1.0, 65.0, -62.5])


def test_quantize_rounds_half_away_from_zero_like_tflite() -> None:
    info = _info("int8", 1.0, 0)
    assert quantize(np.array([0.5, 1.5, 2.5, -0.5, -2.5]), info).tolist() == [1, 2, 3, -1, -3]


def test_uint8_and_float_passthrough() -> None:
    assert quantize(np.array([0.0, 1.0]), _info("uint8", 1 / 255, 0)).tolist() == [0, 255]
    x = np.array([0.25, -3.0], dtype=np.float32)
    np.testing.assert_array_equal(
        dequantize(quantize(x, _info("float32", None, None)), _info("float32", None, None)), x
    )


@given(
    st.floats(1e-4, 10.0),
    st.integers(-128, 127),
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=20),
)
def test_round_trip_error_is_at_most_half_a_step(scale: float, zp: int, values: list[float]) -> None:
    info = _info("int8", scale, zp)
    x = np.array(values)
    lo, hi = (-128 - zp) * scale, (127 - zp) * scale
    inside = (x >= lo) & (x <= hi)
    err = np.abs(dequantize(quantize(x, info), info).astype(np.float64) - x)
    assert np.all(err[inside] <= scale / 2 + 1e-4 * max(1.0, scale))


def test_runtime_runs_without_tensorflow(tmp_path: Path) -> None:
    """A device has numpy and an interpreter only: the runtime must not import TensorFlow."""
    model = ROOT / "tests" / "data" / "add_one_float.tflite"
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["tensorflow"] = None  # makes `import tensorflow` raise ImportError
        sys.path.insert(0, {str(ROOT)!r})
        import numpy as np
        from converter.runtime.model import TFLiteModel
        from converter.runtime.preprocess import Preprocess
        m = TFLiteModel(model_path={str(model)!r})
        out = m.predict(Preprocess(scale=0.5)(np.array([[2.0, 4.0]], dtype=np.float32)))[0]
        assert "tensorflow" not in [k for k, v in sys.modules.items() if v is not None], "tensorflow imported"
        print(out.tolist())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[[2.0, 3.0]]"


def test_latency_stops_at_max_runs_before_min_seconds_and_never_below_runs() -> None:
    from converter.runtime.latency import measure
    from converter.runtime.model import TFLiteModel

    model = TFLiteModel(model_path=str(ROOT / "tests" / "data" / "add_one_float.tflite"))
    # 60 s would be the time floor: the cap ends it at 300 runs (a model this small runs in microseconds)
    assert measure(model, warmup=0, runs=10, min_seconds=60, max_runs=300).runs == 300
    assert measure(model, warmup=0, runs=500, min_seconds=60, max_runs=300).runs == 500  # runs wins over the cap
    assert measure(model, warmup=0, runs=10, min_seconds=0, max_runs=300).runs == 10  # no time floor: runs only
