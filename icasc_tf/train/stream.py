"""A run's data: training batches in an order that depends on (seed, position) alone, so that a
run resumed in the middle of an epoch replays exactly what it trained; the validation batches
best.keras is chosen on; and the test split, looked at only at the end."""

import dataclasses

import numpy as np
import tensorflow as tf

from icasc_tf.data import load_dataset
from icasc_tf.data.registry import get_spec


@dataclasses.dataclass(frozen=True)
class Splits:
    """Which data a run trains, validates and reports on."""

    train: str
    validation: str
    test: str
    hold_out: float  # > 0: validation is this share of ``train``, held out from training
    seed: int  # of the held-out draw

    @classmethod
    def of(cls, config):
        """--validation_split, else the dataset's official validation split, else a held-out
        --validation_share of --train_split, else (share 0) the test split."""
        spec = get_spec(config.dataset)
        test = config.test_split or spec.test_split
        validation = config.validation_split or spec.validation_split
        if validation:
            return cls(config.train_split, validation, test, 0.0, config.seed)
        if config.validation_share > 0:
            return cls(config.train_split, config.train_split, test, config.validation_share, config.seed)
        return cls(config.train_split, test, test, 0.0, config.seed)

    @property
    def validates_on_test(self):
        return not self.hold_out and self.validation == self.test

    def describe(self):
        """``{"train", "validation", "test"}``: each split as a reader should see it."""
        if self.hold_out:
            held = f"{self.hold_out:g} of {self.train} held out, seeded {self.seed}, stratified"
            return {"train": f"{self.train} without the validation share", "validation": held, "test": self.test}
        return {"train": self.train, "validation": self.validation, "test": self.test}


def pass_seed(seed, index):
    """The seed of pass ``index`` over the training split: its order and augmentation draws.

    Pass 0 uses ``seed`` itself; later passes a hash of (seed, index), so no two passes of
    any two seeds share a seed in practice.
    """
    if index == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**32, index]).generate_state(1)[0] >> 1)


class TrainingStream:
    """A run's training batches: passes over the training split, pass p ordered by (seed, p).

    Batch g of the run (counted from 0 over all epochs) is batch g % P of pass g // P, P being
    the batches in one pass (the split's examples // batch_size; the last partial batch is
    dropped). Epoch e trains batches e * steps ... (e + 1) * steps - 1, so without
    --steps_per_epoch epoch e is pass e. Each pass is its own ``load_dataset`` pipeline
    seeded with ``pass_seed(seed, p)``, so the order of any batch depends on (seed, g) alone
    and a run resumed at epoch E, step S rebuilds E's passes and skips the S batches it has
    trained. The pipeline's element order is deterministic (tf.data ``deterministic``; ops
    are not made deterministic by it), so the replay is exact wherever a run stops: a step
    checkpoint, a signal, a mid-epoch resume, several workers sharding batches by position.
    ``replay=False`` lets tf.data's parallel maps reorder neighbouring examples (a little
    faster; no exact replay).
    """

    def __init__(self, config, replay=True):
        self.config = config
        self.splits = Splits.of(config)
        self.replay = replay
        _, self.info = self._pass(0)
        self.batches_per_pass = self.info.num_examples // config.batch_size
        if self.batches_per_pass < 1:
            raise ValueError(
                f"--batch_size={config.batch_size} is larger than the {self.info.num_examples} examples of "
                f"{config.dataset}'s {config.train_split} split; lower --batch_size."
            )

    def _pass(self, index):
        c = self.config
        return load_dataset(
            c.dataset, c.train_split, c.batch_size, training=True, seed=pass_seed(c.seed, index),
            deterministic=c.deterministic or self.replay, reshuffle_each_iteration=False,
            hold_out=self.splits.hold_out, hold_out_seed=self.splits.seed, **data_options(c),
        )

    def batches(self, first, count):
        """``count`` batches from the run's batch ``first`` on, as one dataset."""
        p0, skip = divmod(first, self.batches_per_pass)
        last = (first + count - 1) // self.batches_per_pass
        dataset = self._pass(p0)[0]
        for index in range(p0 + 1, last + 1):
            dataset = dataset.concatenate(self._pass(index)[0])
        # The skipped batches go through the input pipeline (read, decode, augment), not the model.
        return _shard_by_data(dataset.skip(skip).take(count))


def data_options(config):
    """The ``load_dataset`` options a run's config fixes (folders, size, augmentation, builder options)."""
    return dict(
        data_dir=config.data_dir or None,
        manual_dir=config.manual_dir or None,
        image_size=config.image_size or None,
        augmentation=config.augmentation or None,
        **config.options("dataset_config"),
    )


def _shard_by_data(dataset):
    # Shard by element, not by file: small TFDS splits are a single file.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def evaluation_split(config, which, splits=None):
    """The ``"validation"`` or ``"test"`` batches of a run (no augmentation, the split's order)."""
    splits = splits or Splits.of(config)
    held_out = which == "validation" and splits.hold_out > 0
    dataset, info = load_dataset(
        config.dataset, getattr(splits, which), config.batch_size, training=False, seed=config.seed,
        deterministic=config.deterministic, hold_out=splits.hold_out if held_out else 0.0,
        hold_out_seed=splits.seed, held_out=held_out, **data_options(config),
    )
    return _shard_by_data(dataset), info


def evaluation_steps(info, batch_size, eval_steps):
    """Keras's ``steps`` for an evaluation of a split under --eval_steps: None (every batch) when it
    allows as many batches as the split has, or more (Keras would warn that the data ran out)."""
    batches = -(-int(info.num_examples) // int(batch_size))
    return int(eval_steps) if eval_steps and eval_steps < batches else None


def evaluated_examples(info, batch_size, steps):
    """How many examples of a split an evaluation of ``steps`` batches covers (0: every batch).
    Exact: an evaluation pipeline's batches are all full but the last (``evaluation_split``)."""
    total = int(info.num_examples)
    return min(int(steps) * int(batch_size), total) if steps else total


def load_data(config, num_replicas, replay=True):
    """The training stream, the validation pipeline and their infos."""
    if config.batch_size % num_replicas:
        raise ValueError(
            f"--batch_size={config.batch_size} is not divisible by the {num_replicas} replicas; "
            f"use a multiple of {num_replicas}."
        )
    stream = TrainingStream(config, replay=replay)
    validation, validation_info = evaluation_split(config, "validation", stream.splits)
    return stream, validation, stream.info, validation_info
