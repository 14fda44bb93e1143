"""`FastFunctional.predict_on_batch` on JAX: Keras' results without its round trip of
every variable (donated to the step and assigned back), and a layer's assignment in
inference still lands."""

import keras
import numpy as np
import pytest
from conftest import BACKEND
from keras.src.models.functional import Functional

from keras_mobilenets import create_mobilenetv3
from keras_mobilenets.layers.fast_call import FastFunctional

pytestmark = pytest.mark.skipif(BACKEND != "jax", reason="the JAX predict step")


class CallCounter(keras.layers.Layer):
    """Counts its inference calls in a non-trainable variable."""

    def build(self, input_shape):
        self.count = self.add_weight(shape=(), initializer="zeros", trainable=False)

    def call(self, x):
        self.count.assign(self.count + 1.0)
        return x * 2.0


def test_predict_on_batch_matches_keras_and_keeps_the_variables():
    model = create_mobilenetv3("small", input_shape=(32, 32, 3), num_classes=4)
    x = np.random.RandomState(0).rand(2, 32, 32, 3).astype("float32")
    keras_out = Functional.predict_on_batch(model, x)
    values = [v.value for v in model.variables]
    out = model.predict_on_batch(x)
    np.testing.assert_array_equal(out, keras_out)
    # Not donated, not assigned back: every variable holds the very array it held.
    assert all(v.value is value for v, value in zip(model.variables, values))


def test_an_assignment_in_inference_lands():
    inputs = keras.Input((3,))
    counter = CallCounter()
    model = FastFunctional(inputs, counter(inputs))
    x = np.ones((1, 3), "float32")
    for _ in range(2):
        np.testing.assert_array_equal(model.predict_on_batch(x), x * 2.0)
    assert float(counter.count.value) == 2.0


def test_kept_variable_lists_follow_trainable_flags_and_new_values():
    """The variable lists kept between calls are Keras' own after a layer's
    `trainable` flag changes, and a newly assigned value is used at once."""
    from keras_mobilenets.layers.fast_call import _jax_variables

    model = create_mobilenetv3("small", input_shape=(32, 32, 3), num_classes=4)
    x = np.random.RandomState(0).rand(2, 32, 32, 3).astype("float32")
    model.predict_on_batch(x)

    def same_lists():
        trainable, non_trainable = _jax_variables(model)
        return ([id(v) for v in trainable] == [id(v) for v in model.trainable_variables]
                and [id(v) for v in non_trainable] == [id(v) for v in model.non_trainable_variables])

    assert same_lists()
    count = len(model.trainable_variables)
    model.get_layer("stage1_block0").trainable = False
    assert len(model.trainable_variables) < count and same_lists()
    model.trainable = False
    assert not model.trainable_variables and same_lists()
    model.trainable = True
    assert len(model.trainable_variables) == count and same_lists()

    bn = next(v for v in model.non_trainable_variables if "moving_mean" in v.path)
    bn.assign(bn.value + 1.0)
    np.testing.assert_array_equal(model.predict_on_batch(x), Functional.predict_on_batch(model, x))
