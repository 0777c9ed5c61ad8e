"""A model int8 breaks on purpose: the digits classifier with one 1000x activation channel.

``wide`` (conv, ReLU) gets channel 0 scaled up 1000x and ``reader`` (the next conv) that
channel's weights scaled down 1000x. ReLU commutes with positive scaling, so the float
function is unchanged, but ``wide``'s per-tensor activation range is now set by one channel
and the other 15 get a level or two each. Trained here in about 4 s, seeded; used by the
accuracy-loop tests and tools/bench_accuracy.py. With ``pooled``, a max-pool sits between the
two convs: edgeconv's cross-layer equalization pairs directly connected layers only, so it
cannot undo the outlier there and the loop must reach for its CPU-only fallbacks.

    python tools/outlier_model.py OUT.keras|OUT.h5 [--pooled]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "recipes" / "data"
SCALE = 1000.0


def build(out: Path, seed: int = 0, pooled: bool = False, hard_swish: bool = False) -> Path:
    """Train and save the model; a ``.h5`` path builds it with tf_keras (Keras 2), as QAT needs."""
    if out.suffix == ".h5":
        import tf_keras as keras
    else:
        import keras  # type: ignore[no-redef]

    keras.utils.set_random_seed(seed)
    train = np.load(DIGITS / "digits.npz")
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Rescaling(1 / 255.0)(inp)
    wide = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="wide")
    reader = keras.layers.Conv2D(16, 3, activation="relu", name="reader")
    h = wide(h)
    if pooled:
        h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = reader(h)
    if hard_swish:  # an op TFLite cannot quantize to 16x8
        h = keras.layers.Activation("hard_swish", name="hswish")(h)
    out_t = keras.layers.Dense(10, activation="softmax", name="head")(keras.layers.Flatten()(h))
    model = keras.Model(inp, out_t)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(train["x"].astype(np.float32), train["y"], epochs=30, batch_size=32, verbose=0)
    k, b = wide.get_weights()
    k[..., 0] *= SCALE
    b[0] *= SCALE
    wide.set_weights([k, b])
    k2, b2 = reader.get_weights()
    k2[:, :, 0, :] /= SCALE
    reader.set_weights([k2, b2])
    model.save(out)
    return out


def recipe(model: Path, **extra: object) -> dict[str, object]:
    """A recipe for it on the digits, as a dict (write it with yaml.safe_dump)."""
    return {
        "version": 1,
        "name": "outlier",
        "model": str(model),
        "data": {
            "calibration": {"path": str(DIGITS / "digits.npz"), "samples": 200},
            "evaluation": {"path": str(DIGITS / "digits_test.npz")},
        },
        **extra,
    }


if __name__ == "__main__":
    build(Path(sys.argv[1]), pooled="--pooled" in sys.argv[2:])
