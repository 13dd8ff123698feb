"""The 1000 ImageNet (ILSVRC2012) class names, in the class-index order of ImageNet heads.

They come from a file TensorFlow Datasets ships (a dependency already), so nothing is
downloaded: ``tensorflow_datasets/datasets/siscore/labels.py``'s ``IMAGENET_LABELS_LIST``
(the usual synset-sorted list, "tench, Tinca tinca" ... "toilet tissue, ..."). Its order is
checked against TFDS's own ``imagenet2012/labels.txt`` synset ids in the tests.
"""

import functools

NUM_CLASSES = 1000


@functools.cache
def imagenet_class_names(short=True):
    """A tuple of 1000 names; ``short`` keeps each entry's first synonym ("tabby")."""
    try:
        from tensorflow_datasets.datasets.siscore.labels import IMAGENET_LABELS_LIST
    except ImportError as error:  # pragma: no cover - another TFDS layout
        raise ImportError(
            "ImageNet class names are read from tensorflow-datasets' siscore labels file, which "
            "this tensorflow-datasets does not have; pip install tensorflow-datasets==4.9.10"
        ) from error
    names = tuple(IMAGENET_LABELS_LIST)
    if len(names) != NUM_CLASSES:  # pragma: no cover - guards a changed file
        raise ValueError(f"Expected {NUM_CLASSES} ImageNet class names; got {len(names)}.")
    return tuple(n.split(",")[0].strip() for n in names) if short else names
