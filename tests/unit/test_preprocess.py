"""The one preprocessing contract."""

from __future__ import annotations

import numpy as np
import pytest

from converter.runtime.preprocess import Preprocess, resize_bilinear


def test_scale_offset_only() -> None:
    x = np.array([[[[0], [255]]]], dtype=np.uint8)
    out = Preprocess(scale=2 / 255, offset=-1)(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [-1.0, 1.0], atol=1e-6)


def test_identity_keeps_values() -> None:
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    np.testing.assert_array_equal(Preprocess()(x), x)


def test_resize_upsample_by_two_hand_computed() -> None:
    # Half-pixel centres: output pixel j samples input position (j + 0.5) / 2 - 0.5.
    x = np.array([0.0, 10.0], dtype=np.float32).reshape(1, 1, 2, 1)
    out = resize_bilinear(x, (1, 4)).ravel()
    np.testing.assert_allclose(out, [0.0, 2.5, 7.5, 10.0], atol=1e-6)


def test_resize_same_size_is_identity() -> None:
    x = np.random.default_rng(1).random((2, 4, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(resize_bilinear(x, (4, 4)), x)


def test_resize_constant_image_stays_constant() -> None:
    x = np.full((1, 7, 3, 2), 42.0, dtype=np.float32)
    np.testing.assert_allclose(resize_bilinear(x, (13, 5)), 42.0)


def test_resize_matches_tensorflow() -> None:
    tf = pytest.importorskip("tensorflow")
    x = np.random.default_rng(2).random((2, 8, 8, 3)).astype(np.float32)
    for size in [(32, 32), (5, 7), (16, 3)]:
        ours = resize_bilinear(x, size)
        theirs = tf.image.resize(x, size, method="bilinear", antialias=False).numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_resize_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"expects \[N, H, W, C\]"):
        resize_bilinear(np.zeros((4, 4)), (2, 2))
