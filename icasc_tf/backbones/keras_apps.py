"""VGG-19, ResNet-50 and ResNet-101 from ``keras.applications`` (architecture only).

The layer names are keras.applications' own, so its ``*_notop.h5`` ImageNet weight files
load by name. Their weights expect 'caffe' preprocessing, the default here.
"""

import keras

from icasc_tf.backbones.preprocessing import preprocess as apply_preprocess
from icasc_tf.backbones.trunk import Trunk, check_input_size

_MIN_SIZE = 32  # keras.applications' own minimum for these nets

_RESNET_STAGES = {
    "resnet50": ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    "resnet101": ("conv2_block3_out", "conv3_block4_out", "conv4_block23_out", "conv5_block3_out"),
}
_RESNET_APPS = {"resnet50": keras.applications.ResNet50, "resnet101": keras.applications.ResNet101}
_VGG19_STAGES = ("block1_conv2", "block2_conv2", "block3_conv4", "block4_conv4", "block5_conv4")


def _application_trunk(application, inputs, name, preprocess):
    check_input_size(inputs, _MIN_SIZE, name)
    images = apply_preprocess(inputs, preprocess)
    return application(include_top=False, weights=None, input_tensor=images)


def vgg19(inputs, *, name="vgg19", preprocess="caffe"):
    """VGG-19; the last feature map is block5_conv4.

    The final max-pool is left out: global average pooling follows block5_conv4 directly,
    so only pooling and the dense head lie between the last feature map and the logits,
    and the gradient w.r.t. it is dense rather than non-zero at pooling maxima only.
    """
    base = _application_trunk(keras.applications.VGG19, inputs, name, preprocess)
    return Trunk(
        features=base.get_layer(_VGG19_STAGES[-1]).output,
        inner_layer=_VGG19_STAGES[-2],
        last_layer=_VGG19_STAGES[-1],
        stage_layers=_VGG19_STAGES,
    )


def keras_resnet(inputs, *, name, preprocess="caffe"):
    """keras.applications ResNet-50 / ResNet-101 (v1); stage outputs conv2..conv5."""
    stages = _RESNET_STAGES[name]
    base = _application_trunk(_RESNET_APPS[name], inputs, name, preprocess)
    return Trunk(
        features=base.get_layer(stages[-1]).output,
        inner_layer=stages[-2],
        last_layer=stages[-1],
        stage_layers=stages,
    )
