"""One training run from a ``TrainConfig``: strategy, data, model, callbacks, fit, results.

``run_training`` is what ``scripts/train.py`` and the study call. Everything a run makes
lives in ``config.model_dir``:

    config.json, flags.txt   the resolved options (``--flagfile=flags.txt`` repeats the run)
    checkpoints/epoch-NNNN[-step-SSSSSSSS]/
                             weights + optimizer state + position, per epoch and every
                             --checkpoint_every steps (atomic); resumes from here
    best.keras, final.keras  the best model on the eval split, the last one
    logs/                    TensorBoard: scalars (train/validation), attention images
    metrics.json             final evaluation and the history; its presence marks the run done
"""

import dataclasses
import json
import logging
import os
import time

import keras
import numpy as np
import tensorflow as tf

from icasc_tf import painless
from icasc_tf.callbacks import (
    AttentionImages,
    AttentionWarmup,
    BestModel,
    LearningRateLogger,
    ResumableCheckpoint,
    RunPosition,
)
from icasc_tf.config import NOT_PART_OF_RUN, TrainConfig
from icasc_tf.files import atomic_save_model, atomic_write_json, atomic_write_text
from icasc_tf.model import ICASC
from icasc_tf.summaries import TrainingSummaries

_log = logging.getLogger(__name__)
HEAD_LAYER_PREFIXES = ("logits", painless.PREFIX)


class RunExistsError(ValueError):
    """model_dir holds another run (or a finished one) that must not be overwritten."""


# ----------------------------------------------------------------------------- strategy
def make_strategy(name):
    """``auto``: all visible GPUs mirrored (or the one device); ``multi_worker`` reads TF_CONFIG."""
    if name == "multi_worker":  # before anything else touches the TF runtime
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable (see README).")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        if gpus:
            return tf.distribute.MirroredStrategy()
        # Without GPUs, mirror over the logical CPUs (how the tests exercise it), reducing
        # through one device: CPU collectives of several strategies in one process collide.
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
    device = gpus[0].name if gpus else "/cpu:0"
    return tf.distribute.OneDeviceStrategy(device)


def is_chief(strategy):
    """Only the chief writes into model_dir; other workers train alongside."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (not has_chief and resolver.task_id == 0)


# ----------------------------------------------------------------------------- model_dir
def changed_options(config):
    """Options that differ from the run recorded in model_dir (None if there is none)."""
    config_path = os.path.join(config.model_dir, "config.json")
    if not os.path.exists(config_path):
        return None
    with open(config_path, encoding="utf-8") as f:
        previous = json.load(f)
    current = dataclasses.asdict(config)
    defaults = dataclasses.asdict(TrainConfig())  # options added since the run took their defaults
    return sorted(
        k for k in current if k not in NOT_PART_OF_RUN and previous.get(k, defaults[k]) != current[k]
    )


def check_model_dir(config):
    """Read-only: ``"new"``, ``"resume"`` or ``"move_aside"`` (with --overwrite); refuse otherwise.

    A finished run (metrics.json) or a run with other options is never overwritten. Every
    worker calls this before anything is written, so all of them reach the same answer.
    """
    path = config.model_dir
    changed = changed_options(config)
    if changed is None:
        return "new"
    finished = os.path.exists(os.path.join(path, "metrics.json"))
    if not (finished or changed):
        return "resume"
    if config.overwrite:
        return "move_aside"
    if finished:
        raise RunExistsError(
            f"{path} holds a finished run (metrics.json). Choose another --model_dir, or "
            "pass --overwrite to move it aside and train again."
        )
    raise RunExistsError(
        f"{path} holds a run with other options ({', '.join(changed)}). Use another "
        "--model_dir, the same flags to resume it, or --overwrite to move it aside."
    )


def write_run_files(config, action, recipe=None):
    """Chief only, once the model is built: move an old run aside, record the options."""
    path = config.model_dir
    if action == "move_aside":
        aside = f"{path.rstrip('/')}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(path, aside)
        _log.warning("Moved the previous run in %s to %s.", path, aside)
    os.makedirs(path, exist_ok=True)
    atomic_write_text(os.path.join(path, "config.json"), config.to_json())
    header = ["The resolved options of this run: --flagfile=flags.txt repeats it."]
    if recipe:
        header.append(recipe)
    atomic_write_text(os.path.join(path, "flags.txt"), config.to_flagfile(header))


# ----------------------------------------------------------------------------- pieces
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
        from icasc_tf.data import load_dataset

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
    from icasc_tf.data import load_dataset

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


def build_model(config, info):
    from icasc_tf.backbones import build_backbone

    backbone = build_backbone(
        config.arch,
        info.num_classes,
        input_shape=tuple(info.image_shape),
        weights=config.weights or None,
        weight_decay=config.weight_decay,
        **config.options("arch_options"),
    )
    if config.painless_depth:
        from icasc_tf.painless import add_painless_attention

        backbone = add_painless_attention(
            backbone,
            depth=config.painless_depth,
            width=config.painless_width,
            reduction=config.painless_reduction,
            gamma=config.painless_gamma,
        )
    multipliers = (
        {prefix: config.head_lr_multiplier for prefix in HEAD_LAYER_PREFIXES}
        if config.head_lr_multiplier != 1.0
        else None
    )
    return ICASC(
        backbone.model,
        **backbone.icasc_layers(),
        attention=config.attention,
        multi_label=info.multi_label,
        loss_weights=config.float_loss_weights(),
        bn_mode=config.bn_mode,
        sigma=config.sigma,
        omega=config.omega,
        theta=config.theta,
        mask_gradient=config.mask_gradient,
        second_order=config.second_order,
        lr_multipliers=multipliers,
    )


def learning_rate(config, steps_per_epoch):
    total = config.epochs * steps_per_epoch
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=max(total, 1))
    if config.lr_schedule == "step":
        epochs = [float(b) for b in config.lr_boundaries]
        if config.lr_step_every:
            epochs = list(range(config.lr_step_every, config.epochs, config.lr_step_every))
        if not epochs:
            raise ValueError("--lr_schedule=step needs --lr_boundaries (epochs) or --lr_step_every.")
        boundaries = [int(round(e * steps_per_epoch)) for e in epochs]
        values = [config.learning_rate * config.lr_decay**i for i in range(len(boundaries) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    return config.learning_rate


def compiled_metrics(info):
    if info.multi_label:
        return [
            keras.metrics.AUC(curve="PR", multi_label=True, from_logits=True, name="map"),
            keras.metrics.AUC(multi_label=True, from_logits=True, name="auc"),
        ]
    metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if info.num_classes > 5:
        metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"))
    return metrics


def _fixed_batch(dataset, count):
    images, labels = [], []
    for batch in dataset:
        images.append(batch[0].numpy())
        labels.append(batch[1].numpy())
        if sum(len(i) for i in images) >= count:
            break
    return np.concatenate(images)[:count], np.concatenate(labels)[:count]


# ----------------------------------------------------------------------------- the run
def run_training(config: TrainConfig, callbacks=(), recipe=None):
    """Train (or resume) the run described by ``config``; return the final metrics dict.

    ``callbacks`` are added to the run's own; ``recipe`` (text) is recorded at the head of
    flags.txt. Each epoch is one ``model.fit`` call on that epoch's batches of the
    ``TrainingStream`` (a fit covering all epochs could not start an epoch at a given step
    or give an epoch its own order); ``initial_epoch`` and ``epochs`` are the run's, so
    Keras's progress bar counts the run's epochs. ``callbacks`` still see one
    ``on_train_begin`` and one ``on_train_end`` per run (``_OncePerRun``), so Keras's
    EarlyStopping and ReduceLROnPlateau keep their state across epochs.
    """
    config.validate()
    strategy = make_strategy(config.strategy)
    keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision else "float32")
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    chief = is_chief(strategy)
    action = check_model_dir(config)
    checkpoint_dir = os.path.join(config.model_dir, "checkpoints")
    start_epoch, start_step = (
        ResumableCheckpoint(checkpoint_dir).saved_position() if action == "resume" else (0, 0)
    )
    stream, evaluation, info, eval_info = load_data(config, strategy.num_replicas_in_sync)
    steps = config.steps_per_epoch or stream.batches_per_pass
    # An epoch that starts inside a pass skips that pass's first batches: they must be the
    # ones trained before (mid-epoch resumes, epochs shorter or longer than a pass). Workers
    # shard the batches by position, so they must agree on the order too.
    stream.replay = bool(
        config.checkpoint_every or start_step or steps % stream.batches_per_pass or config.strategy == "multi_worker"
    )
    position = RunPosition(steps)
    # Every worker resumes from the chief's checkpoints; only the chief writes them.
    checkpoint = ResumableCheckpoint(checkpoint_dir, write=chief, every=config.checkpoint_every, position=position)
    # Seeded again here: preparing a dataset (the first run on a data_dir) draws from the
    # global generators, and the initial weights must depend on the seed alone.
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_model(config, info)
        optimizer = keras.optimizers.SGD(
            learning_rate(config, steps), momentum=config.momentum, nesterov=config.nesterov
        )
        model.compile(optimizer, metrics=compiled_metrics(info), jit_compile=config.jit_compile)
        # Nothing is written before the model builds, so a bad option leaves no trace.
        if chief:
            write_run_files(config, action, recipe)
        if action == "resume":
            checkpoint.restore(model, steps_per_epoch=steps)
    if action == "resume":
        print(
            f"resuming {config.model_dir} at epoch {start_epoch + 1}, step {start_step} "
            f"({start_epoch} of {config.epochs} epochs and {start_step} of {steps} steps done)",
            flush=True,
        )
    position.start(start_epoch, start_step)
    # Non-chief workers write their (unused) files to a scratch folder, as TF advises.
    task = getattr(getattr(strategy, "cluster_resolver", None), "task_id", 0)
    own_dir = config.model_dir if chief else os.path.join(config.model_dir, ".workers", f"worker-{task}")
    monitor = "val_map" if info.multi_label else "val_accuracy"
    best_path = os.path.join(config.model_dir, "best.keras")
    best = _previous_best(best_path, monitor) if chief else None
    log_dir = os.path.join(own_dir, "logs")
    summaries = TrainingSummaries(log_dir, config.summary_every, position)
    one_epoch = _OneEpochPerFit()
    callers = [_OncePerRun(c) for c in callbacks]
    run_callbacks = [
        position,  # first: the others read the step just trained
        *callers,
        LearningRateLogger(),
        keras.callbacks.TerminateOnNaN(),
        checkpoint,
        BestModel(best_path, monitor, write=chief, best=best),
    ]
    if config.attention_warmup:
        run_callbacks.append(AttentionWarmup(config.attention_warmup, steps, position=position))
    images = None
    if config.attention_images and chief:
        fixed_images, labels = _fixed_batch(evaluation, config.attention_images)
        images = AttentionImages(
            log_dir, fixed_images, labels, info.class_names, multi_label=info.multi_label,
            every=config.attention_images_every, position=position,
        )
        run_callbacks.append(images)
    run_callbacks += [summaries, one_epoch]  # after those that add to the logs; last: stops the fit
    history = {}
    started = time.time()
    try:
        for epoch in range(start_epoch, config.epochs):
            skip = start_step if epoch == start_epoch else 0
            fit = model.fit(
                stream.batches(epoch * steps + skip, steps - skip),
                epochs=config.epochs,
                initial_epoch=epoch,
                steps_per_epoch=steps - skip,
                validation_data=evaluation,
                validation_steps=config.eval_steps or None,
                callbacks=run_callbacks,
                verbose=config.verbose,
                shuffle=False,  # the pipeline shuffles
            )
            for key, values in fit.history.items():
                history.setdefault(key, []).extend(values)
            if not np.isfinite(history.get("loss", [0.0])[-1]):
                raise ValueError(
                    f"Training diverged (NaN loss) in epoch {epoch + 1}; the run is not marked "
                    "finished. Lower --learning_rate, or check the data."
                )
            if one_epoch.stopped_by_callback or not position.epoch_complete:
                break  # a callback stopped training
        for caller in callers:
            caller.finish({k: v[-1] for k, v in history.items()})
    finally:
        summaries.close()
        if images is not None:
            images.close()
    train_seconds = time.time() - started
    results = model.evaluate(evaluation, steps=config.eval_steps or None, verbose=0, return_dict=True)
    summary = {
        "final": {k: float(v) for k, v in results.items()},
        "best": {monitor: best_value} if (best_value := _previous_best(best_path, monitor)) is not None else {},
        "history": {k: [float(x) for x in v] for k, v in history.items()},
        "epochs_run": config.epochs - start_epoch,
        "resumed_at": {"epoch": start_epoch, "step": start_step} if action == "resume" else None,
        "optimizer_steps": int(model.optimizer.iterations.numpy()),
        "train_seconds": train_seconds,
        "num_replicas": strategy.num_replicas_in_sync,
        "dataset": {"name": info.name, "num_classes": info.num_classes, "eval_examples": eval_info.num_examples},
    }
    atomic_save_model(model, os.path.join(own_dir, "final.keras"))
    if chief:
        atomic_write_json(os.path.join(config.model_dir, "metrics.json"), summary)
    return summary


class _OncePerRun(keras.callbacks.Callback):
    """A caller's callback seen through one ``fit`` per epoch: ``on_train_begin`` once, at the
    run's first epoch, and ``on_train_end`` once, at its end (``finish``), as if one ``fit`` ran,
    so that e.g. EarlyStopping and ReduceLROnPlateau keep their state across epochs."""

    _FORWARDED = (
        "on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_batch_end",
        "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end",
    )

    def __init__(self, callback):
        super().__init__()
        self.callback = callback
        self._begun = False
        for hook in self._FORWARDED:
            setattr(self, hook, getattr(callback, hook))

    def set_model(self, model):
        super().set_model(model)
        self.callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)

    def on_train_begin(self, logs=None):
        if not self._begun:
            self._begun = True
            self.callback.on_train_begin(logs)

    def on_train_end(self, logs=None):
        pass

    def finish(self, logs=None):
        self.callback.on_train_end(logs)


class _OneEpochPerFit(keras.callbacks.Callback):
    """Ends each ``fit`` call after one epoch; notes whether another callback asked to stop."""

    stopped_by_callback = False

    def on_epoch_end(self, epoch, logs=None):
        self.stopped_by_callback = bool(self.model.stop_training)
        self.model.stop_training = True


def _previous_best(path, monitor):
    try:
        with open(path + ".json", encoding="utf-8") as f:
            return float(json.load(f)[monitor])
    except (OSError, KeyError, ValueError):
        return None
