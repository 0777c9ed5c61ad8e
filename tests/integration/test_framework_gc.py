"""TensorFlow's and Keras's import is frozen out of garbage collection, and a converted Keras model is still freed."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

from converter import extras

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "models" / "mobilenet_v2_digits.keras"


def test_nothing_is_collected_while_a_framework_imports_and_what_it_made_is_frozen() -> None:
    before = gc.get_freeze_count()
    try:
        with extras.long_lived():
            assert not gc.isenabled()
            with extras.long_lived():  # nested: the outer one decides
                pass
            assert not gc.isenabled()
            made = [[i] for i in range(1000)]
        assert gc.isenabled() and gc.get_freeze_count() >= before + len(made)
        gc.disable()
        with extras.long_lived():
            pass
        assert not gc.isenabled()  # left as it was found
    finally:
        gc.enable()
        gc.unfreeze()


PROBE = """
import gc, json, sys, weakref
from pathlib import Path
import converter.sources.load as load
from converter.extras import require
require("keras")
frozen = gc.get_freeze_count()
models = []
original = load._load_keras
def keep(*args, **kwargs):
    model, said = original(*args, **kwargs)
    models.append(weakref.ref(model))
    return model, said
load._load_keras = keep
loaded = load.load_model(Path(sys.argv[1]))
print(json.dumps({"frozen_by_import": frozen, "frozen_after_load": gc.get_freeze_count(), "enabled": gc.isenabled(),
                  "model_alive": models[0]() is not None, "float_bytes": len(loaded.float_tflite)}))
"""


def test_a_keras_model_is_freed_after_conversion_though_the_import_was_frozen() -> None:
    """Frozen garbage from the import holds the Keras model (the collector takes frozen objects as alive):
    ``release_memory`` unfreezes before it collects. With the collection alone the model stays."""
    pytest.importorskip("keras")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(DEMO)], capture_output=True, text=True, timeout=300, check=True
    )
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said["frozen_by_import"] > 100_000  # TensorFlow and Keras: several hundred thousand objects
    assert said["frozen_after_load"] == 0 and said["enabled"]
    assert not said["model_alive"]
    assert said["float_bytes"] > 100_000
