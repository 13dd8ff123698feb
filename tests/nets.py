"""Tiny functional classifiers for the tests (seconds, not minutes)."""

import keras


def tiny_convnet(num_classes=5, size=16, batch_norm=True, activation="relu", dtype="float32", seed=0):
    """conv -> [BN] -> act ("inner", size) -> conv/2 -> [BN] -> act ("last", size/2) -> GAP -> logits."""
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((size, size, 3), dtype=dtype)
    x = keras.layers.Conv2D(6, 3, padding="same", kernel_initializer=init, dtype=dtype, name="conv1")(inputs)
    if batch_norm:
        x = keras.layers.BatchNormalization(dtype=dtype, name="bn1")(x)
    x = keras.layers.Activation(activation, dtype=dtype, name="inner")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", kernel_initializer=init, dtype=dtype, name="conv2")(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(dtype=dtype, name="bn2")(x)
    x = keras.layers.Activation(activation, dtype=dtype, name="last")(x)
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="pool")(x)
    outputs = keras.layers.Dense(num_classes, kernel_initializer=init, dtype=dtype, name="logits")(x)
    return keras.Model(inputs, outputs, name="tiny")
