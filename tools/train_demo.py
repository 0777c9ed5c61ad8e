"""Train the demo model the README converts: MobileNetV2 (alpha 0.35) on scikit-learn's digits.

Seeded and offline: the data ships inside scikit-learn, nothing is downloaded.
Writes ``recipes/data/digits.npz`` (train, also the calibration set),
``recipes/data/digits_test.npz`` (held-out test set) and
``recipes/models/mobilenet_v2_digits.keras``.

    python tools/train_demo.py [--epochs 40]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261126


def export_digits(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split scikit-learn's 8x8 digits (0..16) into uint8 images (0..255) and save them."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # [N, 8, 8, 1]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    n_test = 360
    test, train = order[:n_test], order[n_test:]
    data_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(data_dir / "digits.npz", x=x[train], y=y[train])
    np.savez_compressed(data_dir / "digits_test.npz", x=x[test], y=y[test])
    return x[train], y[train], x[test], y[test]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from converter.runtime.preprocess import Preprocess

    x_train, y_train, x_test, y_test = export_digits(ROOT / "recipes" / "data")
    prep = Preprocess(resize=(32, 32), scale=1 / 255.0)  # the recipe's input contract
    xt, xv = prep(x_train), prep(x_test)

    keras.utils.set_random_seed(SEED)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 1), alpha=0.35, weights=None, classes=10)
    # The application's BatchNorm momentum (0.999) needs far more steps than this
    # small set gives before its moving statistics settle; 0.9 settles in a few epochs.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    steps = args.epochs * int(np.ceil(len(xt) / 32))
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, steps)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(SEED)
    for epoch in range(args.epochs):
        # Light augmentation: random shifts of up to 2 pixels.
        shifts = rng.integers(-2, 3, size=(len(xt), 2))
        aug = np.stack([np.roll(img, tuple(s), axis=(0, 1)) for img, s in zip(xt, shifts, strict=True)])
        model.fit(aug, y_train, batch_size=32, epochs=1, verbose=0, shuffle=True)
        if (epoch + 1) % 5 == 0:
            _, acc = model.evaluate(xv, y_test, verbose=0)
            print(f"epoch {epoch + 1}: test accuracy {acc:.4f}", flush=True)
    out = ROOT / "recipes" / "models" / "mobilenet_v2_digits.keras"
    out.parent.mkdir(parents=True, exist_ok=True)
    _, acc = model.evaluate(xv, y_test, verbose=0)
    # Save an uncompiled copy: the optimizer state would triple the committed file.
    plain = keras.Model.from_config(model.get_config())
    plain.set_weights(model.get_weights())
    plain.save(out)
    print(f"saved {out} ({out.stat().st_size} bytes), test accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
