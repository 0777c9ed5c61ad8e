"""ONNX sources: onnx2tf, in its own virtualenv as a child process, makes the float .tflite reference.

Nothing of the ONNX file is parsed or run in edgeconv's process: the worker (``onnx_worker.py``, run
by the virtualenv ``edgeconv setup onnx`` makes) reads it, refuses external data outside the model's
folder and custom operators, and runs onnx2tf in a private temporary folder, with JSON in and out and
a timeout. Its crash (a signal, a hang, onnx2tf's ``sys.exit``) is a ``ConversionError`` naming the
step; a model the worker refuses is a ``ModelLoadError`` (exit 2). The traps of onnx2tf it handles
are listed in ``onnx_worker``'s docstring.

Layout: onnx2tf writes image inputs channel-last (NCHW [1, 3, 32, 32] becomes NHWC [1, 32, 32, 3]),
which TFLite kernels and NPUs want; 3-D inputs keep their ONNX shape. The loader line says, per input,
which it was. Checked with onnx2tf 1.29.24; ``tests/integration/test_onnx.py`` runs it for real.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from converter.errors import ConversionError, ModelLoadError
from converter.quantization.tflite_quantizer import finish_prefetch, prefetch_tensorflow
from converter.runtime.model import TFLiteModel, signature_names
from converter.sources import float_check, onnx_setup

TIMEOUT_S = 900.0
EXTERNAL_DATA_MARK = b"location"  # the key of an external-data entry; absent, the file holds every tensor


def check_installed(path: Path) -> None:
    """Fail before any work when the onnx2tf virtualenv is missing (exit 2, with the setup command)."""
    if onnx_setup.installed() is None:
        raise ModelLoadError(str(onnx_setup.not_installed_error(f"model: {path}")))


def cache_salt(path: Path) -> tuple[str, ...] | None:
    """What else the float model depends on (onnx2tf's lock), or None when it must not be cached.

    A model whose tensors may live in external files is never cached: the cache key hashes the .onnx
    file only, and a changed data file would give a stale model. Without the mark it holds them all.
    """
    if EXTERNAL_DATA_MARK in path.read_bytes():
        return None
    return (onnx_setup.TOOLKIT, onnx_setup.SPEC.digest(), f"float check {float_check.MIN_DB:g} dB")


def _last_words(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return " | ".join(lines[-3:]) or "no message"


def run_worker(python: Path, request: dict[str, Any], timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """One worker run; a crash, a hang or a failure of onnx2tf is a ``ConversionError`` that says which."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        done = subprocess.run(
            [str(python), "-I", str(onnx_setup.WORKER)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env=env,
        )
    except subprocess.TimeoutExpired as e:
        raise ConversionError(f"onnx2tf did not finish within {timeout_s:g} s converting the model") from e
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise ConversionError(
            f"onnx2tf crashed ({name}) converting the model; its last words: {_last_words(done.stderr)}"
        )
    lines = done.stdout.strip().splitlines()
    try:
        answer: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if done.returncode != 0 or "ok" not in answer:
        raise ConversionError(
            f"the onnx2tf worker exited with {done.returncode} and no answer; its last words: "
            f"{_last_words(done.stderr)}"
        )
    if not answer["ok"] and not answer.get("user"):
        answer["error"] = toolkit_reason(done.stderr, str(answer.get("error", "")))
    return answer


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit): ")
# onnx2tf's generic advice, printed after every failure: not the reason.
_ADVICE = (
    "The trace log is below",
    "Read this and deal with it",
    "Alternatively,",
    "If the input OP",
    "Also, for models",
)


def toolkit_reason(log: str, error: str) -> str:
    """What onnx2tf said went wrong, from its log: the ONNX op it was converting and the exception's message.

    onnx2tf prints a traceback and generic advice, then exits or raises with a message whose last line
    is often a keyword argument (``• name='sng_Add_0'``); the useful sentence is in between.
    """
    lines = [_ANSI.sub("", line).rstrip() for line in log.splitlines()]
    op = next((ln.split("onnx_op_name:", 1)[1].strip() for ln in lines if "onnx_op_name:" in ln), "")
    said = [
        ln.split("ERROR:", 1)[1].strip()
        for ln in lines
        if "ERROR:" in ln and not any(a in ln for a in _ADVICE) and ":" in ln.split("ERROR:", 1)[1][:40]
    ]
    said = [s for s in said if not s.startswith(("input_onnx_file_path:", "onnx_op_name:"))]
    if not said:  # a reason told in plain sentences (the SavedModel step's name check), no "key: value" lines
        said = [
            " ".join(ln.split("ERROR:", 1)[1].split())
            for ln in lines
            if "ERROR:" in ln and not any(a in ln for a in _ADVICE) and ln.split("ERROR:", 1)[1].strip()
        ]
    message: list[str] = []
    starts = [i for i, ln in enumerate(lines) if _EXCEPTION.match(ln)]
    if starts:
        for ln in lines[starts[-1] :]:
            if ln.startswith(("Call arguments", "  •", "[")) or (message and _EXCEPTION.match(ln)):
                break
            if ln.strip():
                message.append(ln.strip())
    reason = " ".join(message)[:500] or " ".join(said[:2])[:500] or error
    where = f"at ONNX node '{op}': " if op else ""
    return f"{where}{reason}"


def _describe_inputs(inputs: list[dict[str, Any]], model: TFLiteModel) -> str:
    """Per input, its ONNX shape and the float model's, and the layout change onnx2tf made."""
    parts = []
    # onnx2tf may order the inputs otherwise than the ONNX graph (two inputs came out sorted by name):
    # match them by signature name, by position only when the names are not there.
    by_index = {info.index: info.shape for info in model.inputs}
    by_name = {name: by_index[i] for i, name in signature_names(model.interpreter).items() if i in by_index}
    for k, spec in enumerate(inputs):
        found = by_name.get(spec["name"], model.inputs[k].shape if k < len(model.inputs) else None)
        if found is None:
            continue
        onnx_shape, shape = spec["onnx_shape"], list(found)
        batch_one = [1, *onnx_shape[1:]]
        if len(batch_one) == 4 and shape == [batch_one[0], batch_one[2], batch_one[3], batch_one[1]] != batch_one:
            parts.append(f"'{spec['name']}' NCHW {batch_one} taken as NHWC {shape}")
        elif shape == batch_one:
            parts.append(f"'{spec['name']}' {shape} as in the ONNX model")
        else:
            parts.append(f"'{spec['name']}' ONNX {onnx_shape} taken as {shape}")
    return "; ".join(parts)


def cache_facts(layout: str) -> tuple[str, ...]:
    """What besides the file decides the float model: the layout, when it keeps the ONNX model's NCHW, and the
    layout retry when the worker's ``EDGECONV_ONNX_LAYOUT_RETRY`` switches it off."""
    retry = os.environ.get("EDGECONV_ONNX_LAYOUT_RETRY", "").lower() in ("off", "0", "no", "false")
    return (*(() if layout == "nhwc" else (f"layout {layout}",)), *(("no layout retry",) if retry else ()))


def load_onnx(path: Path, timeout_s: float = TIMEOUT_S, layout: str = "nhwc") -> tuple[bytes, str]:
    """The float .tflite of an ONNX model and the loader line that says how it was made.

    ``layout`` nhwc lets onnx2tf make 4-D inputs channel-last (what TFLite kernels and NPUs want); nchw
    keeps them as the ONNX model takes them, as the recipe's ``input.layout: nchw`` asks.
    """
    python = onnx_setup.installed()
    if python is None:
        raise onnx_setup.not_installed_error(f"model: {path}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeconv-onnx-") as tmp:
        work, out = Path(tmp) / "work", Path(tmp) / "model.tflite"
        work.mkdir()
        request = {"onnx": str(path.resolve()), "work": str(work), "out": str(out), "keep_nchw": layout == "nchw"}
        prefetch_tensorflow()  # the quantizer needs it next: its import overlaps onnx2tf's conversion
        try:
            answer = run_worker(python, request, timeout_s)
        finally:
            finish_prefetch()
        if not answer["ok"]:
            if answer.get("user"):
                raise ModelLoadError(f"model: {path}: {answer['error']}")
            raise ConversionError(f"onnx2tf could not convert {path}: {answer['error']}")
        content = out.read_bytes()
    try:
        model = TFLiteModel(model_content=content)
    except Exception as e:  # noqa: BLE001 - the interpreter raises bare RuntimeError/ValueError
        flex = sorted(set(re.findall(r"\((Flex\w+)\)", str(e))))
        if flex:
            raise ModelLoadError(
                f"model: {path}: onnx2tf kept {', '.join(flex)} as TensorFlow ops (no TFLite builtin kernel exists for "
                "them), which no integer target runs; replace the ONNX operators behind them with standard ones "
                "TFLite has, or convert the model from PyTorch (.pt2) instead"
            ) from e
        raise ConversionError(f"onnx2tf wrote a .tflite for {path} that the TFLite interpreter cannot open: {e}") from e
    square = ", ".join(f"{t['name']!r} {t['shape']}" for t in answer.get("square_tensors") or [])
    rnn = ", ".join(
        f"{r['op']} {r['name']!r}: {r['steps']} steps, hidden size {r['hidden']}"
        for r in answer.get("rnn_equal_dims") or []
    )
    layout = (
        "onnx2tf cannot tell channels-first from channels-last where a 4-D tensor's channels, height and width "
        f"are equal, and this model has such tensors ({square}): "
        "exported for another input size it may convert faithfully; otherwise "
        if square
        else "onnx2tf mis-converts a recurrent layer whose sequence length equals its hidden size, and this model "
        f"has one ({rnn}): exported for another sequence length it may convert faithfully; otherwise "
        if rnn
        else "onnx2tf mis-converts an op of this model: "
    )
    check_note = float_check.loader_note(
        path,
        answer.get("float_check") or {},
        "onnx2tf",
        "ONNX",
        "onnxruntime",
        f"{layout}convert it from PyTorch instead (torch.export.save to a .pt2), or report the model to onnx2tf",
    )
    loader = f"onnx2tf {answer['onnx2tf']} in its own virtualenv ({time.perf_counter() - start:.1f} s; inputs: "
    erf = answer.get("erf_as_tanh", 0)
    rewrites = f"; {erf} Erf as tanh(u*(a+b*u^2)), the tanh GELU form, error <= 3.6e-4" if erf else ""
    pads, pools = answer.get("explicit_valid_pads", 0), answer.get("global_pools", 0)
    rewrites += f"; auto_pad VALID written as zero pads on {pads} node{'s' * (pads > 1)}" if pads else ""
    rewrites += (
        f"; {pools} AveragePool{'s' * (pools > 1)} over the whole input as GlobalAveragePool (the mean PyTorch "
        "computes, where onnx2tf and onnxruntime divide by the window's area)"
        if pools
        else ""
    )
    fixes = answer.get("layout_fixes", 0)
    rewrites += (
        f"; converted again with {fixes} onnx2tf parameter replacement{'s' * (fixes > 1)} that make its layout "
        "guess true on 4-D tensors whose channels, height and width are equal (the first conversion computed "
        f"something else: {answer.get('layout_first_sqnr_db', float('nan')):.1f} dB against onnxruntime)"
        if fixes
        else ""
    )
    osd_note = (
        "; converted again with onnx2tf's --output_signaturedefs, the remedy it named for an op name its SavedModel "
        "step rejected"
        if answer.get("output_signaturedefs")
        else ""
    )
    return content, loader + _describe_inputs(answer["inputs"], model) + rewrites + osd_note + check_note + ")"
