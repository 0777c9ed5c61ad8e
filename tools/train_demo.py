"""Train the demo model the README converts: MobileNetV2 on scikit-learn's digits.

Seeded and offline: the data ships inside scikit-learn, nothing is downloaded.
Writes ``recipes/data/digits.npz`` (train, also the calibration set),
``recipes/data/digits_test.npz`` (held-out test set) and
``recipes/models/mobilenet_v2_digits.keras`` (alpha 0.35, 32x32).

    python tools/train_demo.py [--epochs 40]
    python tools/train_demo.py --size 224 --alpha 1.0 --epochs 3 --out build/bench/mobilenet_v2_224.keras
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
    for name, idx in (("digits.npz", train), ("digits_test.npz", test)):
        path = data_dir / name
        if path.is_file():  # npz files carry timestamps: rewrite only when the content changed
            with np.load(path) as old:
                if np.array_equal(old["x"], x[idx]) and np.array_equal(old["y"], y[idx]):
                    continue
        np.savez_compressed(path, x=x[idx], y=y[idx])
    return x[train], y[train], x[test], y[test]


def train(size: int, alpha: float, epochs: int, out: Path, batch_size: int = 32) -> float:
    """Train MobileNetV2 (``alpha``) on the digits resized to ``size``; returns test accuracy."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from converter.runtime.preprocess import Preprocess

    x_train, y_train, x_test, y_test = export_digits(ROOT / "recipes" / "data")
    prep = Preprocess(resize=(size, size), scale=1 / 255.0)  # the recipe's input contract
    xt, xv = prep(x_train), prep(x_test)

    keras.utils.set_random_seed(SEED)
    model = keras.applications.MobileNetV2(input_shape=(size, size, 1), alpha=alpha, weights=None, classes=10)
    # The application's BatchNorm momentum (0.999) needs far more steps than this
    # small set gives before its moving statistics settle; 0.9 settles in a few epochs.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    steps = epochs * int(np.ceil(len(xt) / batch_size))
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, steps)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(SEED)
    shift = max(1, size // 16)
    for epoch in range(epochs):
        # Light augmentation: random shifts of up to size/16 pixels.
        shifts = rng.integers(-shift, shift + 1, size=(len(xt), 2))
        aug = np.stack([np.roll(img, tuple(s), axis=(0, 1)) for img, s in zip(xt, shifts, strict=True)])
        model.fit(aug, y_train, batch_size=batch_size, epochs=1, verbose=0, shuffle=True)
        if (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            _, acc = model.evaluate(xv, y_test, verbose=0)
            print(f"epoch {epoch + 1}: test accuracy {acc:.4f}", flush=True)
    _, acc = model.evaluate(xv, y_test, verbose=0)
    # Save an uncompiled copy: the optimizer state would triple the committed file.
    plain = keras.Model.from_config(model.get_config())
    plain.set_weights(model.get_weights())
    out.parent.mkdir(parents=True, exist_ok=True)
    plain.save(out)
    print(f"saved {out} ({out.stat().st_size} bytes), test accuracy {acc:.4f}")
    return float(acc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--out", type=Path, default=ROOT / "recipes" / "models" / "mobilenet_v2_digits.keras")
    args = parser.parse_args()
    train(args.size, args.alpha, args.epochs, args.out)


if __name__ == "__main__":
    main()
