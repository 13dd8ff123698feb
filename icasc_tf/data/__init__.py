"""Datasets of the ICASC experiments as `tf.data` pipelines built on tensorflow-datasets.

Importing this package registers the TFDS builders defined here (`cluttered_digits`,
`caltech256`, `image_folder`), so `tfds.load("cluttered_digits")` works afterwards.
"""

from icasc_tf.data.caltech256 import Caltech256
from icasc_tf.data.cluttered_digits import ClutteredDigits
from icasc_tf.data.errors import MissingDataError
from icasc_tf.data.image_folder import ImageFolder
from icasc_tf.data.pipeline import DatasetInfo, load_dataset
from icasc_tf.data.registry import DATASETS

__all__ = [
    "DATASETS",
    "Caltech256",
    "ClutteredDigits",
    "DatasetInfo",
    "ImageFolder",
    "MissingDataError",
    "load_dataset",
]
