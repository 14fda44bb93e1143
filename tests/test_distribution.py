"""`keras.distribution.DataParallel` training over two (virtual CPU) devices
on JAX, in a fresh process (the device count is an XLA flag read when JAX
starts): the batch is split, the weights replicated, and the model trains."""

import json
import math
import textwrap

import pytest
from background import finish, start, subprocess_env
from conftest import BACKEND

pytestmark = pytest.mark.skipif(BACKEND != "jax", reason="JAX's DataParallel")

DATA_PARALLEL_SCRIPT = textwrap.dedent(
    """
    import json, math, sys
    sys.path.insert(0, sys.argv[1])
    import jax
    import keras
    import numpy as np
    from mobilenet_v3 import create_mobilenetv3

    devices = keras.distribution.list_devices("cpu")
    distribution = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(distribution)
    keras.utils.set_random_seed(0)
    model = create_mobilenetv3("small", input_shape=(64, 64, 3), num_classes=10)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (32, 64, 64, 3)).astype("float32")
    y = rng.integers(0, 10, 32)
    before = keras.ops.convert_to_numpy(model.trainable_variables[0])
    losses = []
    logger = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"]))
    )
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[logger])
    data = distribution.get_data_layout((16, 64, 64, 3)).backend_layout
    kernel = model.trainable_variables[0].value
    print(json.dumps({
        "jax_devices": len(jax.devices()),
        "mesh_shape": list(distribution.device_mesh.shape),
        "batch_shard": list(data.shard_shape((16, 64, 64, 3))),
        "weight_devices": len(kernel.sharding.device_set),
        "weight_replicated": bool(kernel.sharding.is_fully_replicated),
        "losses": losses,
        "changed": bool(np.any(keras.ops.convert_to_numpy(model.trainable_variables[0]) != before)),
    }))
    """
)


@pytest.fixture(scope="module")
def data_parallel_job():
    # XLA_FLAGS must be set before jax is imported: a fresh process.
    env = subprocess_env("jax")
    env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=2"
    proc = start(DATA_PARALLEL_SCRIPT, [], env)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_data_parallel_trains_on_two_devices(data_parallel_job):
    out = finish(data_parallel_job, "DataParallel training")
    result = json.loads(out.strip().splitlines()[-1])
    print("\nDataParallel:", result)
    assert result["jax_devices"] == 2
    assert result["mesh_shape"] == [2]
    assert result["batch_shard"] == [8, 64, 64, 3]  # the batch of 16 is split 8 + 8
    assert result["weight_devices"] == 2 and result["weight_replicated"]
    assert len(result["losses"]) == 2  # two steps of 16
    assert all(math.isfinite(loss) for loss in result["losses"])
    assert result["changed"]
