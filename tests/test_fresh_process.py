"""LiteRT work in a fresh process (export/fresh_process.py): same result as in-process, the
function's own errors raised again, a dying process reported."""

import numpy as np
import pytest

from elasticvit_tf.export import fresh_process, verify


@pytest.fixture(scope="module")
def tiny_tflite():
    import keras

    from elasticvit_tf.export import tflite

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(5)(x))
    return tflite.convert(model, "float32", batch_size=1)


def test_fresh_process_matches_in_process_and_raises_the_functions_errors(tiny_tflite):
    images = np.random.default_rng(0).standard_normal((6, 8, 8, 3)).astype(np.float32)
    here = verify.run_tflite(tiny_tflite, images)
    there = verify.run_tflite(tiny_tflite, images, fresh_process=True)
    np.testing.assert_array_equal(here, there)
    with pytest.raises(ValueError, match=r"Images have shape \(9, 9, 3\)"):
        verify.run_tflite(
            tiny_tflite, images[:, :1].repeat(9, 1)[:, :, :1].repeat(9, 2), fresh_process=True
        )


def test_a_dying_process_is_reported():
    with pytest.raises(
        fresh_process.FreshProcessError,
        match=r"os.abort failed in its process " r"\(signal SIGABRT\)",
    ):
        fresh_process.call("os", "abort")
