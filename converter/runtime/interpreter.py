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


DELEGATES = ("xnnpack", "none", "edgetpu")
EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


class InterpreterUnavailable(ImportError):
    """No TFLite interpreter package is installed."""


class DelegateUnavailable(RuntimeError):
    """The requested delegate (Edge TPU) cannot be loaded here."""


def interpreter_module() -> tuple[Any, str]:
    """The first importable interpreter API (``Interpreter``, ``OpResolverType``, …) and its package."""
    failures = []
    for module_name, package in _CANDIDATES:
        try:
            module: Any = importlib.import_module(module_name)
        except ImportError as e:  # includes tflite-runtime built against numpy 1
            failures.append(f"{package}: {e}")
            continue
        if package == "tensorflow":  # tf.lite keeps OpResolverType and load_delegate under .experimental
            module = SimpleNamespace(
                Interpreter=module.Interpreter,
                OpResolverType=module.experimental.OpResolverType,
                load_delegate=module.experimental.load_delegate,
            )
        return module, package
    raise InterpreterUnavailable(
        "no TFLite interpreter found; install ai-edge-litert (pip install ai-edge-litert). Tried: "
        + "; ".join(failures)
    )


def edgetpu_delegate(api: Any) -> Any:
    """Load the Edge TPU delegate, or say what is missing."""
    import platform

    library = EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1")
    try:
        return api.load_delegate(library)
    except (ValueError, OSError, AttributeError) as e:
        raise DelegateUnavailable(
            f"cannot load the Edge TPU delegate {library} ({e}); install libedgetpu "
            "(apt-get install libedgetpu1-std on Debian/Raspberry Pi OS) and plug in the accelerator"
        ) from e


def make_interpreter(
    model_content: bytes | None = None,
    model_path: str | None = None,
    num_threads: int | None = None,
    *,
    delegate: str = "xnnpack",
    preserve_all_tensors: bool = False,
) -> Any:
    """An ``Interpreter`` from whichever package is installed (tensors allocated).

    ``delegate``: ``xnnpack`` (LiteRT's default CPU delegate), ``none`` (builtin kernels
    only, so every op stays visible), or ``edgetpu`` (``libedgetpu`` must be installed).
    """
    if delegate not in DELEGATES:
        raise ValueError(f"unknown delegate {delegate!r}; use one of {', '.join(DELEGATES)}")
    api, _ = interpreter_module()
    kwargs: dict[str, Any] = {"num_threads": num_threads}
    if model_content is not None:
        kwargs["model_content"] = model_content
    else:
        kwargs["model_path"] = model_path
    if delegate != "xnnpack":
        kwargs["experimental_op_resolver_type"] = api.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if delegate == "edgetpu":
        kwargs["experimental_delegates"] = [edgetpu_delegate(api)]
    if preserve_all_tensors:
        kwargs["experimental_preserve_all_tensors"] = True
    interpreter = api.Interpreter(**kwargs)
    interpreter.allocate_tensors()
    return interpreter
