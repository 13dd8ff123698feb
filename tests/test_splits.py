"""Model selection never looks at the test set: a seeded, stratified share of the training split
is held out for validation, the training stream never sees it, and every number a run reports
is labelled with the split it comes from."""

import collections
import hashlib
import json
import logging

import numpy as np
import pytest

from icasc_tf.data import load_dataset
from icasc_tf.train import TrainConfig, run_training
from icasc_tf.train.stream import Splits, TrainingStream, evaluated_examples, evaluation_steps

DATA = dict(num_train=200, num_test=40)


def _examples(data_dir, **options):
    """{image digest: label} of one pass over a split (no augmentation)."""
    dataset, info = load_dataset("cluttered_digits", "train", 32, training=False, data_dir=data_dir, **DATA, **options)
    found = {}
    for images, labels in dataset.as_numpy_iterator():
        for image, label in zip(images, labels):
            found[hashlib.sha1(image.tobytes()).hexdigest()] = int(label)
    return found, info


def test_the_held_out_share_is_stratified_seeded_and_disjoint_from_the_rest(tmp_path):
    data_dir = str(tmp_path / "tfds")
    everything, _ = _examples(data_dir)
    rest, rest_info = _examples(data_dir, hold_out=0.2, hold_out_seed=0)
    held, held_info = _examples(data_dir, hold_out=0.2, hold_out_seed=0, held_out=True)
    assert len(everything) == 200 and not set(rest) & set(held) and set(rest) | set(held) == set(everything)
    assert (rest_info.num_examples, held_info.num_examples) == (len(rest), len(held))
    per_class = collections.Counter(everything.values())
    held_per_class = collections.Counter(held.values())
    assert held_per_class == {c: round(0.2 * n) for c, n in per_class.items()}  # every class keeps its share
    again, _ = _examples(data_dir, hold_out=0.2, hold_out_seed=0, held_out=True)
    other, _ = _examples(data_dir, hold_out=0.2, hold_out_seed=1, held_out=True)
    assert set(again) == set(held) and set(other) != set(held)
    assert "held out 0.2, seed 0" in held_info.split
    with pytest.raises(ValueError, match="hold_out must be in"):
        load_dataset("cluttered_digits", "train", 8, data_dir=data_dir, hold_out=1.0, **DATA)


def _config(tmp_path, **overrides):
    values = dict(
        dataset_config=[f"{k}={v}" for k, v in DATA.items()], arch="resnet8", epochs=2, batch_size=16,
        attention_images=0, verbose=0, deterministic=True, model_dir=str(tmp_path / "run"),
        data_dir=str(tmp_path / "tfds"),
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_training_never_sees_the_validation_share(tmp_path):
    config = _config(tmp_path)
    stream = TrainingStream(config, replay=True)
    assert Splits.of(config) == Splits("train", "train", "test", 0.1, 0)
    held, _ = _examples(config.data_dir, hold_out=0.1, hold_out_seed=0, held_out=True)
    trained = set()
    for images, _ in stream.batches(0, 2 * stream.batches_per_pass).as_numpy_iterator():
        # The stream augments nothing on this dataset: its images are the split's own.
        trained |= {hashlib.sha1(image.tobytes()).hexdigest() for image in images}
    assert len(held) == 20 and not trained & set(held) and stream.info.num_examples == 180


@pytest.mark.slow
def test_a_run_labels_every_number_with_its_split_and_reports_test_at_the_end(tmp_path):
    summary = run_training(_config(tmp_path))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(summary))
    assert metrics["splits"]["validation"].startswith("0.1 of train held out")
    assert metrics["splits"]["test"] == "test" and metrics["test"]["split"] == "test"
    assert metrics["dataset"]["validation_examples"] == 20 and metrics["dataset"]["test_examples"] == 40
    best = metrics["validation"]["best"]
    assert best["epoch"] in (1, 2) and 0.0 <= best["val_accuracy"] <= 1.0
    # best.keras is what the validation split chose; both models are scored on test only now.
    assert set(metrics["test"]) == {"split", "examples", "split_examples", "final", "best"}
    # Without --eval_steps every evaluation covers its whole split.
    assert (metrics["test"]["examples"], metrics["test"]["split_examples"]) == (40, 40)
    assert (metrics["validation"]["examples"], metrics["validation"]["split_examples"]) == (20, 20)
    assert np.isfinite(metrics["test"]["best"]["accuracy"]) and np.isfinite(metrics["test"]["final"]["accuracy"])


@pytest.mark.slow
def test_validation_share_zero_validates_on_test_with_a_warning(tmp_path, caplog):
    config = _config(tmp_path, validation_share=0.0, epochs=1)
    assert Splits.of(config).validates_on_test
    with caplog.at_level(logging.WARNING):
        summary = run_training(config)
    assert "--validation_share=0: validating on the split 'test'" in caplog.text
    assert "best.keras is chosen on the numbers it reports" in caplog.text
    assert summary["splits"]["validation"] == "test" and summary["dataset"]["validation_examples"] == 40


def test_an_official_validation_split_or_an_explicit_one_is_used_as_is():
    voc = TrainConfig(dataset="voc2012")
    assert Splits.of(voc) == Splits("train", "validation", "validation", 0.0, 0)
    explicit = TrainConfig(validation_split="train[180:]", train_split="train[:180]")
    assert Splits.of(explicit) == Splits("train[:180]", "train[180:]", "test", 0.0, 0)
    with pytest.raises(ValueError, match="--validation_share must be in"):
        TrainConfig(validation_share=1.0).validate()


def test_a_partial_evaluation_counts_exactly_the_examples_its_batches_hold(tmp_path):
    dataset, info = load_dataset("cluttered_digits", "test", 16, training=False, data_dir=str(tmp_path), **DATA)
    sizes = [len(labels) for _, labels in dataset.as_numpy_iterator()]
    assert sizes == [16, 16, 8] and info.num_examples == 40  # the last batch is partial
    for eval_steps, steps, examples in ((0, None, 40), (1, 1, 16), (2, 2, 32), (3, None, 40), (9, None, 40)):
        assert evaluation_steps(info, 16, eval_steps) == steps  # None: every batch (Keras never runs out)
        assert evaluated_examples(info, 16, steps) == examples == sum(sizes[:steps])
