"""TensorFlow and Keras start without the integrations they would import for nothing (JAX, scikit-learn, matplotlib)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from converter import extras


def test_only_modules_not_yet_imported_are_held_back_and_only_while_the_framework_imports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(extras, "UNUSED_INTEGRATIONS", ("edgeconv_absent_integration", "json"))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    with extras.unused_integrations_skipped():
        with pytest.raises(ImportError):
            import edgeconv_absent_integration  # type: ignore[import-not-found]  # noqa: F401
        assert sys.modules["json"] is json  # imported before: untouched
    assert "edgeconv_absent_integration" not in sys.modules
    monkeypatch.setenv("KERAS_BACKEND", "jax")  # Keras may then need JAX itself
    with extras.unused_integrations_skipped():
        assert "edgeconv_absent_integration" not in sys.modules


PROBE = """
import json, sys
from converter.extras import UNUSED_INTEGRATIONS, require
require("keras")
from converter.quantization.tflite_quantizer import import_tensorflow
import_tensorflow()
import importlib, importlib.util
loaded = [m for m in UNUSED_INTEGRATIONS if m in sys.modules]
later = [m for m in UNUSED_INTEGRATIONS if importlib.util.find_spec(m) and importlib.import_module(m)]
print(json.dumps({"loaded": loaded, "later": later, "tf": "tensorflow" in sys.modules}))
"""


def test_keras_and_tensorflow_load_without_them_and_they_import_afterwards() -> None:
    pytest.importorskip("keras")
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, check=True)
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said["tf"] and said["loaded"] == []
    installed = [m for m in extras.UNUSED_INTEGRATIONS if importlib.util.find_spec(m) is not None]
    assert said["later"] == installed  # each one that is installed still imports after the frameworks did
