"""
A few steps of MultiWorkerMirroredStrategy training on CPU, started by
launch.sh with TF_CONFIG from ``idetcd env --format tf-config``: each
worker's gRPC server listens on its 'srv' port.  Every worker prints one
line a step, ``worker I/W step S loss L``, and at the end its weights'
sum, the same on every worker: the gradients are all-reduced.

A custom training loop (``strategy.run``), not ``model.fit``: with Keras 3,
which TensorFlow ships since 2.16, ``model.fit`` under this strategy fails
with "ValueError: Attempt to convert a value (PerReplica…)" (keras-team/keras
issue 20585).  The loop works with Keras 3 and with tf_keras alike.
"""

import json
import os

import tensorflow as tf


def main(steps=5):
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG
    workers = strategy.num_replicas_in_sync  # one CPU replica per worker
    with strategy.scope():
        model = tf.keras.Sequential([tf.keras.Input(shape=(16,)), tf.keras.layers.Dense(1)])
        optimizer = tf.keras.optimizers.SGD(0.05)

    @tf.function
    def step(x, y):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(x) - y) ** 2)
            gradients = tape.gradient(loss, model.trainable_variables)
            # Under the strategy, applying all-reduces the gradients first.
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss

        return strategy.run(replica_step, args=(x, y))

    tf.random.set_seed(index)  # each worker its own data
    for number in range(1, steps + 1):
        x = tf.random.normal((32, 16))
        loss = step(x, tf.reduce_sum(x, axis=1, keepdims=True))
        print(f"worker {index}/{workers} step {number} loss {float(loss):.3f}", flush=True)
    total = sum(float(tf.reduce_sum(v)) for v in model.trainable_variables)
    print(f"worker {index}/{workers} done, weights sum {total:.6f}", flush=True)


if __name__ == "__main__":
    main()
