"""Packages of the ``convert`` extra: import them, or say which extra to install.

The lean install (``.[runtime]``) only runs models; converting needs TensorFlow, Keras, h5py,
TFLite Micro and matplotlib. A missing one is the user's install, so it is exit 2 with the
pip command, never a traceback. Only a missing *top-level* package counts: an ``ImportError``
from inside an installed package (a private API that moved) is a bug here and stays exit 3.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from typing import Any

from converter.errors import UserInputError

INSTALL_CONVERT = 'pip install "edgeconv[convert]"'
INSTALL_NPU = 'pip install "edgeconv[npu]"'
# Packages of other extras than ``convert``, with the command that installs them.
OTHER_EXTRAS = {"ethosu": ("Arm's Vela compiler for Ethos-U targets", INSTALL_NPU)}
CONVERT_EXTRA = ("tensorflow", "keras", "tf_keras", "h5py", "tflite_micro", "matplotlib")


# Where the extra cannot help: packages published for some platforms only.
PLATFORM_NOTES = {
    "tflite_micro": "tflite-micro is published for Linux x86_64 only, so on other machines MCU targets "
    "(TFLite Micro) cannot be checked; run this recipe on Linux x86_64 (e.g. in CI) or drop its MCU targets",
}


def missing_extra_error(module: str, error: ImportError) -> UserInputError:
    """The error for a converter package that cannot be imported: which extra to install."""
    if module in OTHER_EXTRAS:
        what, install = OTHER_EXTRAS[module]
        return UserInputError(
            f"'{module}' ({what}) cannot be imported in this Python ({error}); install it with {install}"
        )
    note = PLATFORM_NOTES.get(module)
    return UserInputError(
        f"converting a model needs '{module}', which cannot be imported in this Python ({error}); "
        f"the lean install only runs models: install the converter extra with {INSTALL_CONVERT}"
        + (f" ({note})" if note else "")
    )


def check_importable(module: str, what: str) -> None:
    """Fail before any work when ``what`` will need ``module`` and it is not installed."""
    if importlib.util.find_spec(module) is None:
        raise missing_extra_error(module, ModuleNotFoundError(f"{what} needs it; it is not installed", name=module))


# Integrations that TensorFlow and Keras import at start-up whenever they are installed, each behind
# ``try: import ... except ImportError``, and that converting never calls: JAX (TFLite's ``from_jax``),
# scikit-learn (Keras' scikit-learn wrappers, which pull in SciPy) and matplotlib (Keras' image galleries).
# Where all three are installed they are 1.8 s of a 5 s ``import keras`` and 200 MB of its 745 MB.
UNUSED_INTEGRATIONS = ("jax", "sklearn", "matplotlib")
FRAMEWORKS = frozenset({"tensorflow", "keras", "tf_keras"})


@contextlib.contextmanager
def unused_integrations_skipped() -> Iterator[None]:
    """While a framework imports, ``import m`` of an ``UNUSED_INTEGRATIONS`` module not yet imported fails.

    Only the entries set here are removed afterwards, so a later ``import matplotlib`` (edgeconv's plots, a
    user's custom objects) loads the real package, and one already imported is never touched. Nothing is
    skipped when Keras is set to another backend (``KERAS_BACKEND``), which may be JAX.
    """
    skipped = [m for m in UNUSED_INTEGRATIONS if m not in sys.modules]
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        skipped = []
    for m in skipped:
        sys.modules[m] = None  # type: ignore[assignment]  # the documented way to make an import fail
    try:
        yield
    finally:
        for m in skipped:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]


@contextlib.contextmanager
def long_lived() -> Iterator[None]:
    """No garbage collection while a framework imports; then what exists is frozen (``gc.freeze``).

    Importing TensorFlow and Keras makes a few hundred thousand objects that live as long as the process and
    are never garbage: each full collection walks all of them again. On a MobileNetV2-224 conversion the
    collector ran 8 full collections (6 while importing, none of which found anything) for 0.7-1.0 s of an
    11-13 s run. Frozen, they are left out of every later collection, which then walks only what the conversion
    made (the Keras model, TensorFlow's graphs) and still frees it. A cycle that was garbage already when the
    import ended stays in memory; there are few (the collections during the import found none).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


@contextlib.contextmanager
def framework_import() -> Iterator[None]:
    """Where TensorFlow, Keras or their converter modules are imported: without the integrations they would
    load for nothing (``unused_integrations_skipped``), and with their objects kept out of collections
    (``long_lived``)."""
    with unused_integrations_skipped(), long_lived():
        yield


def require(module: str) -> Any:
    """Import a package of the ``convert`` extra, or say which extra to install (exit 2, not a crash).

    TensorFlow and Keras are imported as ``framework_import`` says.
    """
    if module in FRAMEWORKS and module not in sys.modules:
        try:
            with framework_import():
                return importlib.import_module(module)
        except ImportError:
            pass  # a release that needs one of them after all: import it as it is
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise missing_extra_error(module, e) from e


def missing_extra(error: BaseException) -> str | None:
    """The converter-extra package that is not installed, if ``error``'s chain says so, else None."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ModuleNotFoundError) and current.name in CONVERT_EXTRA:
            return current.name
        current = current.__cause__ or current.__context__
    return None
