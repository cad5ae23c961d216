"""The Keras reference runner: traced once into a graph for every batch size, and eager where tracing fails."""

import keras
import numpy as np
import pytest

from devtools.tiny_models import two_input_model, two_input_samples
from kerasport.ingest.importer import ContractHints, contract_from_keras
from kerasport.parity.runners import EDGE_BATCH_SIZES, KerasRunner

FP32_ROUNDING = 1e-6  # graph and eager execution may fuse ops differently: float32 rounding apart, no more


@keras.saving.register_keras_serializable(package="test_reference_runner")
class ScaleByMean(keras.layers.Layer):
    """Reads its input's value in Python (`float(...)`): runs eagerly, cannot be traced into a graph."""

    def call(self, values):
        return values * float(keras.ops.convert_to_numpy(keras.ops.mean(values)))

    def compute_output_shape(self, input_shape):
        return input_shape


def saved(model, path):
    model.save(path)
    return path


def runner_for(model, path, source=None) -> KerasRunner:
    return KerasRunner(saved(model, path), contract_from_keras(model, ContractHints(), {}), source)


def eager(model, inputs: dict) -> list[np.ndarray]:
    arrays = [inputs[tensor.name.split(":")[0]] for tensor in model.inputs]
    outputs = model(arrays, training=False)
    return [keras.ops.convert_to_numpy(value) for value in outputs]


def test_traced_reference_answers_like_the_eager_model_at_every_batch_size_with_one_trace(tmp_path):
    model = two_input_model()
    runner = runner_for(model, tmp_path / "two.keras")
    inputs = two_input_samples(max(EDGE_BATCH_SIZES), 3).inputs
    for batch in EDGE_BATCH_SIZES:
        sliced = {name: array[:batch] for name, array in inputs.items()}
        answered = runner.run(sliced)
        for name, expected in zip(answered, eager(model, sliced), strict=True):
            assert answered[name].shape == expected.shape
            np.testing.assert_allclose(answered[name], expected, rtol=0, atol=FP32_ROUNDING, err_msg=name)
    assert runner._traced.experimental_get_tracing_count() == 1


def test_a_model_that_cannot_be_traced_is_run_eagerly(tmp_path):
    inputs = keras.Input((4,), name="features")
    model = keras.Model(inputs, ScaleByMean(name="scale")(keras.layers.Dense(3, name="dense")(inputs)))
    runner = runner_for(model, tmp_path / "eager.keras", {"custom_objects": __name__})
    features = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    (answered,) = runner.run({"features": features}).values()
    np.testing.assert_allclose(answered, keras.ops.convert_to_numpy(model(features, training=False)),
                               rtol=0, atol=FP32_ROUNDING)
    assert runner._eager


@pytest.mark.parametrize("batch", [1, 5])
def test_the_float64_twin_traces_in_float64(tmp_path, batch):
    model = two_input_model()
    runner = runner_for(model, tmp_path / "two.keras").float64_twin()
    inputs = {name: array[:batch] for name, array in two_input_samples(8, 4).inputs.items()}
    assert all(value.dtype == np.float64 for value in runner.run(inputs).values()
               if np.issubdtype(value.dtype, np.floating))
