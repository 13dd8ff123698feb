"""One training run from a ``TrainConfig``: strategy, data, model, callbacks, fit, results.

``run_training`` is what ``scripts/train.py`` and the study call. Everything a run makes
lives in ``config.model_dir``:

    config.json, flags.txt   the resolved options (``--flagfile=flags.txt`` repeats the run)
    checkpoints/epoch-NNNN/  weights + optimizer state per epoch (atomic); resumes from here
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
)
from icasc_tf.config import NOT_PART_OF_RUN, TrainConfig
from icasc_tf.files import atomic_save_model, atomic_write_json, atomic_write_text
from icasc_tf.model import ICASC

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


def write_run_files(config, action):
    """Chief only, once the model is built: move an old run aside, record the options."""
    path = config.model_dir
    if action == "move_aside":
        aside = f"{path.rstrip('/')}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(path, aside)
        _log.warning("Moved the previous run in %s to %s.", path, aside)
    os.makedirs(path, exist_ok=True)
    atomic_write_text(os.path.join(path, "config.json"), config.to_json())
    atomic_write_text(os.path.join(path, "flags.txt"), config.to_flagfile())


# ----------------------------------------------------------------------------- pieces
def load_data(config, num_replicas, epochs_done=0):
    """Train and eval pipelines; a resumed run draws new shuffles instead of replaying epoch 0's."""
    from icasc_tf.data import load_dataset

    if config.batch_size % num_replicas:
        raise ValueError(
            f"--batch_size={config.batch_size} is not divisible by the {num_replicas} replicas; "
            f"use a multiple of {num_replicas}."
        )
    common = dict(
        data_dir=config.data_dir or None,
        manual_dir=config.manual_dir or None,
        image_size=config.image_size or None,
        seed=config.seed + 7919 * epochs_done,
        deterministic=config.deterministic,
        **config.options("dataset_config"),
    )
    train, info = load_dataset(config.dataset, config.train_split, config.batch_size, training=True, **common)
    evaluation, eval_info = load_dataset(config.dataset, config.eval_split, config.batch_size, training=False, **common)
    # Shard by element, not by file: small TFDS splits are a single file.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return train.with_options(options), evaluation.with_options(options), info, eval_info


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
def run_training(config: TrainConfig, callbacks=()):
    """Train (or resume) the run described by ``config``; return the final metrics dict.

    ``callbacks`` are added to the run's own (the study times steps with one).
    """
    config.validate()
    strategy = make_strategy(config.strategy)
    keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision else "float32")
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    chief = is_chief(strategy)
    action = check_model_dir(config)
    # Every worker resumes from the chief's checkpoints; only the chief writes them.
    checkpoint = ResumableCheckpoint(os.path.join(config.model_dir, "checkpoints"), write=chief)
    epochs_done = checkpoint.epochs_done() if action == "resume" else 0
    train, evaluation, info, eval_info = load_data(config, strategy.num_replicas_in_sync, epochs_done)
    steps = config.steps_per_epoch or max(info.num_examples // config.batch_size, 1)
    if config.steps_per_epoch:
        train = train.repeat()
    with strategy.scope():
        model = build_model(config, info)
        optimizer = keras.optimizers.SGD(
            learning_rate(config, steps), momentum=config.momentum, nesterov=config.nesterov
        )
        model.compile(optimizer, metrics=compiled_metrics(info), jit_compile=config.jit_compile)
        # Nothing is written before the model builds, so a bad option leaves no trace.
        if chief:
            write_run_files(config, action)
        initial_epoch = checkpoint.restore(model) if action == "resume" else 0
    # Non-chief workers write their (unused) files to a scratch folder, as TF advises.
    task = getattr(getattr(strategy, "cluster_resolver", None), "task_id", 0)
    own_dir = config.model_dir if chief else os.path.join(config.model_dir, ".workers", f"worker-{task}")
    monitor = "val_map" if info.multi_label else "val_accuracy"
    best_path = os.path.join(config.model_dir, "best.keras")
    best = _previous_best(best_path, monitor) if chief else None
    log_dir = os.path.join(own_dir, "logs")
    callbacks = [
        *callbacks,
        LearningRateLogger(),
        keras.callbacks.TerminateOnNaN(),
        checkpoint,
        BestModel(best_path, monitor, write=chief, best=best),
        keras.callbacks.TensorBoard(log_dir, update_freq=config.summary_every),
    ]
    if config.attention_warmup:
        callbacks.append(AttentionWarmup(config.attention_warmup, steps))
    if config.attention_images and chief:
        images, labels = _fixed_batch(evaluation, config.attention_images)
        callbacks.append(
            AttentionImages(log_dir, images, labels, info.class_names, multi_label=info.multi_label)
        )
    started = time.time()
    history = model.fit(
        train,
        epochs=config.epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps,
        validation_data=evaluation,
        validation_steps=config.eval_steps or None,
        callbacks=callbacks,
        verbose=config.verbose,
        shuffle=False,  # the pipeline shuffles
    )
    train_seconds = time.time() - started
    if model.stop_training and not np.isfinite(history.history.get("loss", [np.nan])[-1]):
        raise ValueError(
            f"Training diverged (NaN loss) in epoch {initial_epoch + len(history.epoch)}; the run is "
            "not marked finished. Lower --learning_rate, or check the data."
        )
    results = model.evaluate(evaluation, steps=config.eval_steps or None, verbose=0, return_dict=True)
    summary = {
        "final": {k: float(v) for k, v in results.items()},
        "best": {monitor: best_value} if (best_value := _previous_best(best_path, monitor)) is not None else {},
        "history": {k: [float(x) for x in v] for k, v in history.history.items()},
        "epochs_run": config.epochs - initial_epoch,
        "train_seconds": train_seconds,
        "num_replicas": strategy.num_replicas_in_sync,
        "dataset": {"name": info.name, "num_classes": info.num_classes, "eval_examples": eval_info.num_examples},
    }
    atomic_save_model(model, os.path.join(own_dir, "final.keras"))
    if chief:
        atomic_write_json(os.path.join(config.model_dir, "metrics.json"), summary)
    return summary


def _previous_best(path, monitor):
    try:
        with open(path + ".json", encoding="utf-8") as f:
            return float(json.load(f)[monitor])
    except (OSError, KeyError, ValueError):
        return None
