"""The input normalisation a backbone's pretrained weights expect, carried as its first layer.

Data pipelines feed float32 RGB in [0, 1] (CIFAR-style data: [0, 1] minus the per-pixel
mean). Weights trained elsewhere expect their own scaling; putting it inside the model
means users never preprocess by hand and a saved model keeps its own convention.
"""

import keras
from keras import ops

# "caffe": keras.applications VGG/ResNet weights (BGR, 0-255, ImageNet mean subtracted).
# "torch": torchvision / keras-hub ResNet weights (RGB, ImageNet mean and std).
# "lite": tensorflow/tpu EfficientNet-Lite weights (RGB, (255 x - 127) / 128).
# "none": identity, for networks trained from scratch on already-normalised data.
PREPROCESS_MODES = ("caffe", "torch", "lite", "none")

_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_RGB_MEAN = (0.485, 0.456, 0.406)
_TORCH_RGB_STD = (0.229, 0.224, 0.225)
_LITE_MEAN, _LITE_STD = 127.0, 128.0  # efficientnet_lite_builder.MEAN_RGB / STDDEV_RGB


def check_preprocess_mode(mode):
    if mode not in PREPROCESS_MODES:
        raise ValueError(
            f"Unknown preprocess={mode!r}: choose one of {', '.join(PREPROCESS_MODES)}."
        )
    return mode


@keras.saving.register_keras_serializable(package="icasc_tf")
class ImagePreprocess(keras.layers.Layer):
    """Maps [0, 1] RGB images to the scaling of ``mode`` (see ``PREPROCESS_MODES``)."""

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        self.mode = check_preprocess_mode(mode)

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        if self.mode == "caffe":
            mean = ops.array(_CAFFE_BGR_MEAN, self.compute_dtype)
            return ops.flip(images, axis=-1) * 255.0 - mean
        if self.mode == "torch":
            mean = ops.array(_TORCH_RGB_MEAN, self.compute_dtype)
            return (images - mean) / ops.array(_TORCH_RGB_STD, self.compute_dtype)
        if self.mode == "lite":
            return (images * 255.0 - _LITE_MEAN) / _LITE_STD
        return images

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def preprocess(images, mode):
    """``images`` after a layer named ``preprocess`` (no layer at all for mode "none")."""
    if check_preprocess_mode(mode) == "none":
        return images
    if images.shape[-1] != 3:
        raise ValueError(
            f"preprocess={mode!r} normalises RGB images for pretrained weights, so inputs need "
            f"3 channels; got input shape {tuple(images.shape[1:])}. Feed RGB images, or pass "
            "preprocess='none'."
        )
    return ImagePreprocess(mode, name="preprocess")(images)
