"""A run's training batches, in an order that depends on (seed, position) alone, so that a run
resumed in the middle of an epoch replays exactly what it trained; and its validation batches."""

import numpy as np
import tensorflow as tf

from icasc_tf.data import load_dataset


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
    trained. With ``replay`` the pipeline's element order is deterministic (tf.data
    ``deterministic``; ops are not made deterministic by it), so the replay is exact;
    ``run_training`` sets it whenever an epoch can start inside a pass (--checkpoint_every,
    a mid-epoch resume, --steps_per_epoch not a multiple of P). Without it tf.data's parallel
    maps may reorder neighbouring examples, as in any run.
    """

    def __init__(self, config, replay=False):
        self.config = config
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
            **_data_options(c),
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


def _data_options(config):
    return dict(
        data_dir=config.data_dir or None,
        manual_dir=config.manual_dir or None,
        image_size=config.image_size or None,
        **config.options("dataset_config"),
    )


def _shard_by_data(dataset):
    # Shard by element, not by file: small TFDS splits are a single file.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def load_data(config, num_replicas, replay=False):
    """The training stream, the eval pipeline and their infos."""
    if config.batch_size % num_replicas:
        raise ValueError(
            f"--batch_size={config.batch_size} is not divisible by the {num_replicas} replicas; "
            f"use a multiple of {num_replicas}."
        )
    stream = TrainingStream(config, replay=replay)
    evaluation, eval_info = load_dataset(
        config.dataset, config.eval_split, config.batch_size, training=False, seed=config.seed,
        deterministic=config.deterministic, **_data_options(config),
    )
    return stream, _shard_by_data(evaluation), stream.info, eval_info
