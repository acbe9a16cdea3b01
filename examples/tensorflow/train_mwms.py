"""
A few steps of MultiWorkerMirroredStrategy training on CPU, started by
launch.sh with TF_CONFIG from ``idetcd env --format tf-config``: each
worker's gRPC server listens on its 'srv' port.
"""

import json
import os

import tensorflow as tf


def main(steps=20):
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG
    with strategy.scope():
        model = tf.keras.Sequential([tf.keras.Input(shape=(16,)), tf.keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
    x = tf.random.normal((32 * steps, 16), seed=task["index"])
    y = tf.reduce_sum(x, axis=1, keepdims=True)
    # Every worker takes part in every step: the gradients are all-reduced.
    model.fit(x, y, batch_size=32, epochs=1, verbose=2 if task["index"] == 0 else 0)


if __name__ == "__main__":
    main()
