"""Convert one zoo architecture from one source with edgeconv and with the stock converter, and measure both.

edgeconv runs in-process through its CLI (click's ``CliRunner``: the exit code and message a user gets),
with the zoo's seeded calibration samples, no evaluation, analysis, latency or cache. The stock converter
is ``TFLiteConverter`` full-integer (``TFLITE_BUILTINS_INT8``, int8 I/O) on the same samples, from the
Keras 3 model's SavedModel (what ``from_keras_model`` converts internally; the export is shared). Both int8
models are run in LiteRT on the held-out samples and compared with the Keras model's float outputs (cosine,
SQNR); ours is also run in TFLite Micro's interpreter. Timings are recorded, never judged.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tools.zoo import Built

INTEGER_DTYPES = frozenset({"int8", "int16", "int32"})
SQNR_CAP_DB = 200.0
_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '([A-Z0-9_]+)'")


@dataclass(frozen=True)
class Measured:
    """One int8 model's verdicts and error figures (None where the model did not come out or run)."""

    converted: bool
    error: str | None = None
    full_integer: bool | None = None
    float_ops: tuple[str, ...] = ()  # ops with a float tensor, as "NAME (op i)"
    ops: int | None = None
    runs_litert: bool | None = None
    litert_error: str | None = None
    cosine: float | None = None  # the worst output's, against the Keras model's float output
    sqnr_db: float | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class TFLM:
    """Whether TFLite Micro's interpreter loads and runs a model, and what it lacks when not."""

    runs: bool
    missing_ops: tuple[str, ...] = ()
    error: str | None = None
    max_diff_steps: int | None = None  # TFLM (reference kernels) vs LiteRT on the first held-out sample


@dataclass(frozen=True)
class Case:
    """edgeconv's result for one (architecture, source), with the stock converter's beside it."""

    arch: str
    source: str
    exit_code: int
    ours: Measured
    stock: Measured | None
    tflm: TFLM | None
    message: str = ""  # the CLI's output when it did not exit 0
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    denom = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    return float(a64 @ b64 / denom) if denom else float(np.array_equal(a64, b64))


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    noise = float(np.sum((ref - test.astype(np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return SQNR_CAP_DB
    return min(SQNR_CAP_DB, 10.0 * float(np.log10(max(signal, 1e-300) / noise)))


def measure(model: bytes, built: Built, source: str, seconds: float) -> Measured:
    """Full-integer check, a LiteRT run on the held-out samples and its error against float."""
    from converter.runtime.model import TFLiteModel
    from converter.tflite.inspect_model import list_ops

    ops = list_ops(model)
    floats = tuple(
        f"{op.name} (op {op.index})" for op in ops if set(op.input_dtypes + op.output_dtypes) - INTEGER_DTYPES
    )
    try:
        litert = TFLiteModel(model_content=model)
        outputs = litert.predict(for_model(litert, built.held_out))
        outputs = [outputs[i] for i in output_order(litert, built.output_names)]
    except Exception as e:  # noqa: BLE001 - the interpreter raises bare RuntimeError/ValueError
        return Measured(True, None, not floats, floats, len(ops), False, _short(e), seconds=seconds)
    expected = built.float_outputs[source]
    cos = min(cosine(f, q) for f, q in zip(expected, outputs, strict=True))
    sqnr = min(sqnr_db(f, q) for f, q in zip(expected, outputs, strict=True))
    return Measured(True, None, not floats, floats, len(ops), True, None, cos, sqnr, seconds)


def _plain(name: str) -> str:
    """A tensor's Keras name: ``serving_default_image:0`` (SavedModel routes) is ``image``."""
    return name.removeprefix("serving_default_").split(":")[0]


def _names(model: Any, infos: list[Any]) -> list[str]:
    """Each tensor's name as the Keras model called it: its signature name, else its own."""
    from converter.runtime.model import signature_names

    signature = signature_names(model.interpreter)
    return [_plain(signature.get(info.index, info.name)) for info in infos]


def for_model(model: Any, x: np.ndarray) -> np.ndarray:
    """Samples packed per Keras input name, re-keyed by the model's own input tensor names (one input: as is).

    A converted model's inputs may be ordered and named differently (``serving_default_image:0``); matching
    by the signature's names feeds each array to its input whatever the order.
    """
    from converter.runtime.model import pack_inputs

    if x.dtype.names is None:
        return x
    return pack_inputs(
        {info.name: x[name] for info, name in zip(model.inputs, _names(model, model.inputs), strict=True)}
    )


def output_order(model: Any, keras_names: tuple[str, ...]) -> list[int]:
    """The model's output positions in the Keras model's output order (by name; positional when names differ)."""
    names = _names(model, model.outputs)
    if len(names) > 1 and sorted(names) == sorted(keras_names):
        return [names.index(n) for n in keras_names]
    # Keras 3's model.export names the signature's outputs output_0, output_1, ... in the model's order.
    numbered = [f"output_{k}" for k in range(len(names))]
    if len(names) > 1 and sorted(names) == sorted(numbered):
        return [names.index(n) for n in numbered]
    return list(range(len(names)))


def _short(error: BaseException | str, limit: int = 400) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def recipe_for(built: Built, source: str) -> dict[str, Any]:
    """A minimal recipe: the zoo's calibration samples; no evaluation, analysis, latency or cache."""
    return {
        "version": 1,
        "name": f"{built.arch.name}-{source}",
        "model": str(built.sources[source]),
        "data": {"calibration": {"path": str(built.folder / "calibration.npz"), "samples": len(built.calibration)}},
        "calibration": {"cache": False},
        "benchmark": {"enabled": False},
        "analysis": {"samples": 0},
        **(
            {"custom_objects": list(built.arch.h5_custom_objects)}
            if source == "h5" and built.arch.h5_custom_objects
            else {}
        ),
    }


def run_ours(built: Built, source: str, out: Path) -> tuple[int, str, Measured]:
    """edgeconv convert through its CLI; the exit code, its output when not 0, and the measured int8 model."""
    from click.testing import CliRunner

    from converter.cli.main import main
    from converter.reports.report import INT8_NAME

    out.parent.mkdir(parents=True, exist_ok=True)
    recipe = out.parent / f"{out.name}.yaml"
    recipe.write_text(yaml.safe_dump(recipe_for(built, source), sort_keys=False))
    start = time.perf_counter()
    trust = ["--allow-custom-objects"] if "custom_objects" in recipe_for(built, source) else []
    result = CliRunner().invoke(main, ["convert", "--recipe", str(recipe), "--out", str(out), *trust])
    seconds = time.perf_counter() - start
    if result.exit_code != 0:
        message = _short(result.output.strip().splitlines()[-1] if result.output.strip() else repr(result.exception))
        return result.exit_code, result.output, Measured(False, message, seconds=seconds)
    return 0, "", measure((out / INT8_NAME).read_bytes(), built, source, seconds)


def run_stock(built: Built) -> Measured:
    """The stock TFLiteConverter, full-integer with int8 I/O, on the same calibration samples."""
    import tensorflow as tf

    start = time.perf_counter()
    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(built.saved_model))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        cal = built.calibration
        names = cal.dtype.names
        if names is None:
            converter.representative_dataset = lambda: ([s[None]] for s in cal)
        else:  # several inputs: one dict per sample, keyed by the signature's input names
            converter.representative_dataset = lambda: ({n: s[n][None] for n in names} for s in cal)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        model = bytes(converter.convert())
    except Exception as e:  # noqa: BLE001 - the stock converter raises many types; its failure is a finding
        return Measured(False, _stock_error(e), seconds=time.perf_counter() - start)
    return measure(model, built, "keras", time.perf_counter() - start)


def _stock_error(error: Exception) -> str:
    """The line of a converter error that names the problem (MLIR dumps pages of context)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "error:" in line:
            return _short(line[line.index("error:") :])
    return _short(lines[0] if lines else type(error).__name__)


def run_tflm(model: bytes, sample: np.ndarray) -> TFLM:
    """Load and run ``model`` in TFLite Micro's interpreter (generous arena) on one sample (a batch of one)."""
    from tflite_micro.python.tflite_micro import runtime

    from converter.runtime.model import TFLiteModel, input_arrays, quantize
    from converter.tflite.inspect_model import list_ops
    from converter.tflite.ops import tflm_missing

    listed = tflm_missing(list_ops(model))
    if listed:  # TFLM would refuse them; loading such a model only prints the first
        return TFLM(False, tuple(listed), "no TFLM kernel")
    litert = TFLiteModel(model_content=model, delegate="none")
    arrays = input_arrays(for_model(litert, sample), litert.inputs)
    qs = [quantize(a, info) for a, info in zip(arrays, litert.inputs, strict=True)]
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)  # TFLM reports on C++ stderr
        try:
            interpreter = runtime.Interpreter.from_bytes(model, arena_size=max(len(model) * 10, 8 << 20))
            for i, q in enumerate(qs):
                interpreter.set_input(q, i)
            interpreter.invoke()
            micro = [interpreter.get_output(k) for k in range(len(litert.outputs))]
            error = None
        except (RuntimeError, ValueError) as e:
            error = str(e)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        log = capture.read().decode(errors="replace")
    if error is not None:
        missing = tuple(sorted(set(_MISSING_OP.findall(log + error))))
        last = log.strip().splitlines()[-1] if log.strip() else error
        return TFLM(False, missing, _short(last))
    for q, info in zip(qs, litert.inputs, strict=True):
        litert.interpreter.set_tensor(info.index, q)
    litert.interpreter.invoke()
    refs = [litert.interpreter.get_tensor(o.index) for o in litert.outputs]
    steps = max(int(np.abs(m.astype(np.int64) - r.astype(np.int64)).max()) for m, r in zip(micro, refs, strict=True))
    return TFLM(True, max_diff_steps=steps)


def run_case(built: Built, source: str, out: Path, stock: Measured | None) -> Case:
    """One (architecture, source): edgeconv's exit code and figures, TFLM on its model, stock beside it."""
    from converter.reports.report import INT8_NAME

    code, message, ours = run_ours(built, source, out)
    tflm = run_tflm((out / INT8_NAME).read_bytes(), built.held_out[:1]) if code == 0 and ours.full_integer else None
    notes = (f".h5 built with {built.h5_note}",) if source == "h5" else ()
    return Case(built.arch.name, source, code, ours, stock, tflm, message, notes)
