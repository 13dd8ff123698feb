"""The dataset harness: what every registered dataset (`DatasetSpec`) must satisfy, checked alike for each.

`check_dataset(name, batch_size, **load_kwargs)` builds the dataset's pipelines with `load_dataset`
(pass `data_dir`, `manual_dir`, builder options and a small `image_size` to keep it cheap) and asserts:
- batches of the declared shape and dtype, pixels in [0, 1] (within [-1, 1] where the train pixel
  mean is subtracted; evaluated at the dataset's own size, adding it back gives 8-bit pixels),
  labels int32 in [0, C) or, for multi-label data, multi-hot float32 [B, C];
- as many class names as classes, distinct and non-empty;
- one training pass (no remainder dropped) yields every example of the split once, in
  `steps_per_epoch` batches; the same seed gives the same batches, another seed other ones;
- evaluation yields every example once in `steps_per_epoch` batches, in the same order every pass;
- boxes, where the spec declares them, yielded by every pass above, in [0, 1] with min <= max;
  `with_boxes=True` is refused where it does not declare them;
- ten crops where the augmentation crops after resizing: [B, 10, H, W, 3], crop 4 the centre
  crop and crop 9 its mirror; refused otherwise.
Each test file applies it to its datasets' own small data; `tests/test_extend_data.py` checks
that every name in `registry.SPECS` is applied somewhere.
"""

import collections
import types

import numpy as np
import pytest

from icasc_tf.data import load_dataset
from icasc_tf.data.augmentations import get_augmentation
from icasc_tf.data.registry import get_spec

COMPARED_BATCHES = 2  # of training, for the same-seed and other-seed checks


def _check_images(images, info, restorable):
    """Shape, dtype and range; `restorable`: the images are the stored ones minus the mean, nothing else."""
    mean = info.pixel_mean
    assert images.dtype == np.float32
    assert images.shape[1:] == ((info.num_crops,) if info.num_crops > 1 else ()) + info.image_shape
    low = -1.0 if mean is not None else 0.0
    assert low - 1e-6 <= images.min() and images.max() <= 1.0 + 1e-6, (images.min(), images.max())
    if mean is not None and restorable:
        restored = (images + mean) * 255.0
        np.testing.assert_allclose(restored, np.clip(np.round(restored), 0, 255), atol=1e-3)


def _check_labels(labels, info):
    if info.multi_label:
        assert labels.dtype == np.float32 and labels.shape[1:] == (info.num_classes,)
        assert set(np.unique(labels)) <= {0.0, 1.0}
    else:
        assert labels.dtype == np.int32 and labels.ndim == 1
        assert labels.min() >= 0 and labels.max() < info.num_classes


def _check_boxes(boxes, batch_size):
    assert boxes.dtype == np.float32 and boxes.shape == (batch_size, 4)
    assert np.all((boxes >= 0.0) & (boxes <= 1.0))
    assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])


def _check_batches(batches, info, batch_size, restorable=False):
    assert len(batches) == info.steps_per_epoch
    assert [len(b[1]) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    assert sum(len(b[1]) for b in batches) == info.num_examples
    for images, labels, *boxes in batches:
        _check_images(images, info, restorable)
        _check_labels(labels, info)
        for box in boxes:
            _check_boxes(box, len(labels))


def _label_counts(batches):
    rows = np.concatenate([b[1] for b in batches])
    return collections.Counter(map(bytes, rows.reshape(len(rows), -1)))


def _same(first, second):
    return len(first) == len(second) and all(
        np.array_equal(a, b) for x, y in zip(first, second) for a, b in zip(x, y)
    )


def _check_class_names(info):
    names = info.class_names
    assert len(names) == info.num_classes and len(set(names)) == len(names)
    assert all(isinstance(name, str) and name for name in names)


def check_dataset(name, batch_size=4, *, train_split="train", eval_split=None, **load_kwargs):
    """Asserts what every dataset must satisfy; returns the passes for the caller's own checks."""
    spec = get_spec(name)
    eval_split = eval_split or spec.test_split
    augmentation = load_kwargs.get("augmentation") or spec.augmentation
    crops_after_resize = get_augmentation(augmentation).crops_after_resize

    def batches(split, **options):
        dataset, info = load_dataset(name, split, batch_size, **load_kwargs, **options)
        return list(dataset.as_numpy_iterator()), info

    boxes = dict(with_boxes=spec.box_key is not None)  # boxes, where declared, go through every pass
    training = dict(training=True, deterministic=True, drop_remainder=False, **boxes)
    train, train_info = batches(train_split, seed=0, **training)
    assert train_info.training and train_info.num_examples > batch_size
    _check_class_names(train_info)
    _check_batches(train, train_info, batch_size)
    assert _same(batches(train_split, seed=0, **training)[0][:COMPARED_BATCHES], train[:COMPARED_BATCHES])
    assert not _same(batches(train_split, seed=1, **training)[0][:COMPARED_BATCHES], train[:COMPARED_BATCHES])
    unaugmented, _ = batches(train_split, training=False, **boxes)
    assert _label_counts(unaugmented) == _label_counts(train)  # every training example once

    dataset, test_info = load_dataset(name, eval_split, batch_size, training=False, **boxes, **load_kwargs)
    test = list(dataset.as_numpy_iterator())
    assert not test_info.training and test_info.class_names == train_info.class_names
    # Evaluated with its own augmentation at its own size, an image is the stored one minus the mean.
    own_size = test_info.pixel_mean is not None and test_info.pixel_mean.shape == test_info.image_shape
    _check_batches(test, test_info, batch_size, restorable=own_size and augmentation == spec.augmentation)
    assert _same(list(dataset.as_numpy_iterator()), test)  # evaluation keeps its order

    assert test_info.has_boxes == boxes["with_boxes"] and len(test[0]) == (3 if test_info.has_boxes else 2)
    if not test_info.has_boxes:
        with pytest.raises(ValueError, match="has no boxes"):
            load_dataset(name, eval_split, batch_size, with_boxes=True, **load_kwargs)

    if crops_after_resize:
        ten, ten_info = batches(eval_split, training=False, crops="ten")
        assert ten_info.num_crops == 10
        _check_batches(ten, ten_info, batch_size)
        np.testing.assert_allclose(ten[0][0][:, 4], test[0][0], atol=1e-6)
        np.testing.assert_allclose(ten[0][0][:, 9], test[0][0][:, :, ::-1], atol=1e-6)
    else:
        with pytest.raises(ValueError, match='crops="ten" works with'):
            load_dataset(name, eval_split, batch_size, training=False, crops="ten", **load_kwargs)
    return types.SimpleNamespace(train=train, train_info=train_info, test=test, test_info=test_info)
