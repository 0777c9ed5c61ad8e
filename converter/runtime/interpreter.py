"""Find a TFLite interpreter: LiteRT first, then tflite-runtime, then TensorFlow's own.

numpy and the interpreter only: this module runs on devices without TensorFlow.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import Any

_CANDIDATES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow.lite", "tensorflow"),
)


class InterpreterUnavailable(ImportError):
    """No TFLite interpreter package is installed."""


def interpreter_module() -> tuple[Any, str]:
    """The first importable interpreter API (``Interpreter``, ``OpResolverType``, …) and its package."""
    failures = []
    for module_name, package in _CANDIDATES:
        try:
            module: Any = importlib.import_module(module_name)
        except ImportError as e:  # includes tflite-runtime built against numpy 1
            failures.append(f"{package}: {e}")
            continue
        if package == "tensorflow":  # tf.lite keeps OpResolverType under .experimental
            module = SimpleNamespace(Interpreter=module.Interpreter, OpResolverType=module.experimental.OpResolverType)
        return module, package
    raise InterpreterUnavailable(
        "no TFLite interpreter found; install ai-edge-litert (pip install ai-edge-litert). Tried: "
        + "; ".join(failures)
    )


def make_interpreter(
    model_content: bytes | None = None,
    model_path: str | None = None,
    num_threads: int | None = None,
    *,
    xnnpack: bool = True,
    preserve_all_tensors: bool = False,
) -> Any:
    """An ``Interpreter`` from whichever package is installed (tensors allocated).

    ``xnnpack=False`` uses the builtin kernels only (no default delegate), so every
    op stays visible and runs the reference/optimized TFLite kernels.
    """
    api, _ = interpreter_module()
    kwargs: dict[str, Any] = {"num_threads": num_threads}
    if model_content is not None:
        kwargs["model_content"] = model_content
    else:
        kwargs["model_path"] = model_path
    if not xnnpack:
        kwargs["experimental_op_resolver_type"] = api.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if preserve_all_tensors:
        kwargs["experimental_preserve_all_tensors"] = True
    interpreter = api.Interpreter(**kwargs)
    interpreter.allocate_tensors()
    return interpreter
