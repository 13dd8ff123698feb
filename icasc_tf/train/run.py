"""One training run from a ``TrainConfig``: what ``scripts/train.py`` and the study call.

``run_training`` goes through named steps: set up the runtime, read the run folder, load the
data, build the model, open the run folder (refuse, or lock it, write the options and restore a
resumed run), assemble the callbacks, train epoch by epoch, finish. The inputs (options,
dataset, folders, network) are checked before anything is written into the run folder, so a
refused or failed run leaves another run's folder as it was. Everything a run makes lives in
its ``RunDir`` (``config.model_dir``).
"""

import contextlib
import dataclasses
import hashlib
import logging
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from icasc_tf import painless
from icasc_tf.backbones import apply_weight_decay, build_backbone
from icasc_tf.data.registry import get_spec
from icasc_tf.feature_maps import HEAD_LAYER, FeatureGraph
from icasc_tf.fit_callbacks import AttentionImages, AttentionWarmup
from icasc_tf.keras_compat import multi_worker
from icasc_tf.model import ICASC
from icasc_tf.train.checkpoint import ResumableCheckpoint
from icasc_tf.train.config import TrainConfig
from icasc_tf.train.files import atomic_copy, atomic_save_model, atomic_write_json
from icasc_tf.train.own_model import OwnModel, is_model_file, load_own_model
from icasc_tf.train.run_callbacks import (
    BestModel,
    EpochLine,
    LearningRateLogger,
    OncePerRun,
    OneEpochPerFit,
    RunPosition,
    StopOnSignal,
    TrainingSummaries,
    metric_of,
    validation_log,
)
from icasc_tf.train.run_dir import RunDir, RunExistsError, RunLock
from icasc_tf.train.strategy import is_chief, make_strategy, task_id
from icasc_tf.train.stream import evaluated_examples, evaluation_split, evaluation_steps, load_data

_log = logging.getLogger(__name__)
# Layers trained with --head_lr_multiplier: the classifier and painless attention's modules.
HEAD_LAYER_PREFIXES = (HEAD_LAYER, painless.PREFIX)


# ----------------------------------------------------------------------------- the model of a run
def build_model(config, info, own=None):
    """The run's ``ICASC`` model (backbone, painless attention, method options); not compiled.
    ``own``: the ``OwnModel`` of ``--arch=FILE.keras``, else the registered backbone is built."""
    if own is not None:
        apply_weight_decay([layer for _, layer in FeatureGraph.of(own.model).layer_paths()], config.weight_decay)
        return _icasc(config, info, own.model, own.inner_layer, own.last_layer, [own.head])
    backbone = build_backbone(
        config.arch,
        info.num_classes,
        input_shape=tuple(info.image_shape),
        weights=config.weights or None,
        weight_decay=config.weight_decay,
        **config.options("arch_options"),
    )
    if config.painless_depth:
        backbone = painless.add_painless_attention(
            backbone,
            depth=config.painless_depth,
            width=config.painless_width,
            reduction=config.painless_reduction,
            gamma=config.painless_gamma,
        )
    layers = backbone.icasc_layers()
    inner, last = config.inner_layer or layers["inner_layer"], config.last_layer or layers["last_layer"]
    return _icasc(config, info, backbone.model, inner, last, HEAD_LAYER_PREFIXES)


def _icasc(config, info, network, inner_layer, last_layer, heads):
    """ICASC around ``network`` with the run's method options; ``heads``: the layer paths (or
    prefixes) that --head_lr_multiplier speeds up."""
    multipliers = {head: config.head_lr_multiplier for head in heads} if config.head_lr_multiplier != 1.0 else None
    return ICASC(
        network,
        inner_layer=inner_layer,
        last_layer=last_layer,
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
    """The schedule of --lr_schedule over the run's optimizer steps (or a constant)."""
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


def monitored_metric(info):
    """The validation metric ``best.keras`` is chosen on."""
    return validation_log("map" if info.multi_label else "accuracy")


def plural(count, noun):
    """``1 epoch``, ``2 epochs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


# ----------------------------------------------------------------------------- the steps
@dataclasses.dataclass
class _Run:
    """What the steps of one run share."""

    config: TrainConfig
    strategy: tf.distribute.Strategy
    run_dir: RunDir
    chief: bool
    action: str = "new"  # "new", "resume" or "move_aside"
    refusal: RunExistsError = None  # why the run folder cannot take this run, raised after the inputs' checks
    start: tuple = (0, 0)  # (epoch, step) the run starts at
    stream: object = None
    validation: tf.data.Dataset = None
    test: tf.data.Dataset = None
    test_info: object = None
    info: object = None
    validation_info: object = None
    steps: int = 0
    position: RunPosition = None
    own_model: OwnModel = None  # --arch=FILE.keras
    checkpoint: ResumableCheckpoint = None
    model: ICASC = None

    @property
    def own(self):
        """Where this worker writes: the run folder (chief) or a scratch run folder."""
        return self.run_dir if self.chief else self.run_dir.worker(task_id(self.strategy))


def _set_up_runtime(config):
    """Strategy first (multi-worker must come before anything touches the TF runtime), then
    precision, seeds and determinism."""
    strategy = make_strategy(config.strategy)
    keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision else "float32")
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    return strategy


def _load_own_model(run):
    """``--arch=FILE.keras``: the user's network (under the strategy's scope) and, unless given, the image
    size it takes, before the run folder is compared with the options. When the file has gone, the
    run folder's copy made when the run started."""
    config = run.config
    if not is_model_file(config.arch):
        return
    path = config.arch
    if os.path.isfile(run.run_dir.network_path) and not config.overwrite:
        path = run.run_dir.network_path  # the network the run started with, whatever became of the file since
        print(f"network: the run folder's copy of {config.arch} as the run started ({path})", flush=True)
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"--arch={config.arch}: no such file.")
    with run.strategy.scope():
        run.own_model = load_own_model(path, config.pixel_scale, config.inner_layer, config.last_layer)
    if config.image_size not in (0, run.own_model.image_size):
        raise ValueError(f"--image_size={config.image_size}, but --arch={config.arch} takes "
                         f"{run.own_model.image_size}-pixel images: leave --image_size out.")
    config.image_size = run.own_model.image_size


def _read_run_folder(run):
    """What the run folder holds, read before anything is written (every worker reads it as it is
    now, so all of them reach the same answer); a refusal is kept and raised once the inputs are
    known good, so that a wrong dataset or folder is not hidden behind it."""
    try:
        run.action = run.run_dir.check(run.config)
    except RunExistsError as refusal:
        run.refusal = refusal


def _load_data(run):
    config = run.config
    run.stream, run.validation, run.info, run.validation_info = load_data(config, run.strategy.num_replicas_in_sync)
    splits = run.stream.splits
    if splits.validates_on_test:
        cause = (
            f"{config.dataset} has no labelled test split" if not config.validation_split and get_spec(
                config.dataset).validation_split == splits.test else "--validation_share=0"
        )
        _log.warning(
            "%s: validating on the split %r that the results are reported on, so best.keras is chosen on the "
            "numbers it reports; final.keras's are the unbiased ones.", cause, splits.test,
        )
    # Loaded now (not iterated) so that a missing test split fails before any training.
    run.test, run.test_info = evaluation_split(config, "test", run.stream.splits)
    run.steps = config.steps_per_epoch or run.stream.batches_per_pass
    run.position = RunPosition(run.steps)
    # Every worker resumes from the chief's checkpoints; only the chief writes them.
    run.checkpoint = ResumableCheckpoint(
        run.run_dir.checkpoints, write=run.chief, every=config.checkpoint_every, position=run.position,
        data=_data_identity(run.info),
    )


def _data_identity(info):
    """What a checkpoint records of the training data, so that a resume on other data is refused
    (an image folder's prepared name carries a digest of its files)."""
    names = hashlib.sha1("\n".join(info.class_names).encode("utf-8")).hexdigest()[:12]
    return {"dataset": info.tfds_name, "classes": names, "train_examples": int(info.num_examples)}


def _build_model(run):
    """Build and compile the model (nothing is written: a bad option leaves no trace)."""
    config = run.config
    # Seeded again here: preparing a dataset (the first run on a data_dir) draws from the
    # global generators, and the initial weights must depend on the seed alone.
    keras.utils.set_random_seed(config.seed)
    with run.strategy.scope():
        if run.own_model is not None and run.own_model.num_classes != run.info.num_classes:
            raise ValueError(
                f"--arch={config.arch} outputs {run.own_model.num_classes} class scores, but {config.dataset} has "
                f"{run.info.num_classes} classes: give the model a head of {run.info.num_classes} (e.g. "
                f"keras.layers.Dense({run.info.num_classes})).")
        model = build_model(config, run.info, run.own_model)
        optimizer = keras.optimizers.SGD(
            learning_rate(config, run.steps), momentum=config.momentum, nesterov=config.nesterov
        )
        model.compile(optimizer, metrics=compiled_metrics(run.info), jit_compile=config.jit_compile)
    run.model = model


def _open_run(run, lock, header):
    """The run folder, once the inputs are known good: refused with nothing in it touched, or
    locked (chief), checked again under the lock, moved aside (--overwrite) and given the run's
    options; a resumed run's checkpoint restored."""
    if run.refusal is not None:
        raise run.refusal
    config = run.config
    if run.chief:
        lock.acquire()
        run.action = run.run_dir.check(config)  # again under the lock: another run may have ended meanwhile
        if run.action == "move_aside":
            lock.release()  # its lock file goes, not into the folder moved aside
            aside = run.run_dir.move_aside()
            lock.acquire()
            _log.warning("Moved the previous run in %s to %s.", run.run_dir.path, aside)
        run.run_dir.write_options(config, header)
        if run.own_model is not None and not os.path.exists(run.run_dir.network_path):
            atomic_copy(config.arch, run.run_dir.network_path)
    if run.action == "resume":
        with run.strategy.scope():
            run.start = run.checkpoint.restore(run.model, steps_per_epoch=run.steps)
        epoch, step = run.start
        print(
            f"resuming {config.model_dir} at epoch {epoch + 1}, step {step} "
            f"({epoch} of {plural(config.epochs, 'epoch')} and {step} of {plural(run.steps, 'step')} done)",
            flush=True,
        )
    run.position.start(*run.start)


def _announce(run):
    """One short block before the first epoch: the data, the model, the method, the run folder."""
    config, info = run.config, run.info
    if not config.verbose or not run.chief:
        return
    splits = run.stream.splits.describe()
    model = run.model
    weights = model.loss_weights
    if model.attention_enabled:
        method = (
            f"ICASC {model.attention}, loss weights {' '.join(f'{w:g}' for w in weights)} (L_AS^in, L_AS^la, L_AC), "
            f"{'second' if model.second_order else 'first'} order, layers {model.inner_layer} / {model.last_layer}"
        )
    else:
        method = "baseline (no attention losses)"
    shape = "x".join(str(d) for d in info.image_shape)
    lines = [
        f"data:   {config.dataset}, {info.num_classes} classes: train {info.num_examples} ({splits['train']}), "
        f"validation {run.validation_info.num_examples} ({splits['validation']}), test {run.test_info.num_examples} "
        f"({splits['test']})",
        f"model:  {config.arch}{' + ' + config.weights + ' weights' if config.weights else ''}, "
        f"{model.backbone.count_params() / 1e6:.2f} M parameters, {shape} input",
        f"method: {method}",
        f"run:    {config.model_dir}: {plural(config.epochs, 'epoch')} x {plural(run.steps, 'step')} of "
        f"{plural(config.batch_size, 'image')}; best.keras chosen on validation {metric_of(monitored_metric(info))}",
    ]
    if config.eval_steps:
        counts = {which: _evaluated(run, which) for which in ("validation", "test")}
        lines.append(
            f"eval:   --eval_steps={config.eval_steps}: each evaluation on "
            + ", ".join(f"{n} of {total} {which} images" for which, (n, total) in counts.items())
        )
    print("\n".join(lines), flush=True)


def _split_info(run, which):
    return run.validation_info if which == "validation" else run.test_info


def _steps(run, which):
    """Keras's ``steps`` for an evaluation of the ``"validation"`` or ``"test"`` split (--eval_steps)."""
    return evaluation_steps(_split_info(run, which), run.config.batch_size, run.config.eval_steps)


def _evaluated(run, which):
    """``(examples evaluated, examples in the split)`` of one evaluation of ``which`` split."""
    info = _split_info(run, which)
    return evaluated_examples(info, run.config.batch_size, _steps(run, which)), int(info.num_examples)


def _progress(config):
    """Keras's ``verbose`` for ``fit`` and our own progress callbacks: a progress bar only on a
    terminal; redirected, one plain line per epoch (``EpochLine``) instead of its redraws."""
    if config.verbose == 1 and not sys.stdout.isatty():
        return 0, True
    return config.verbose, False


def _previous_best(run, monitor):
    """The value best.keras was saved at (a resumed run keeps it), None before one or off the chief."""
    try:
        return float(run.run_dir.best_record()[monitor]) if run.chief else None
    except (KeyError, TypeError, ValueError):
        return None


def _callbacks(run, callbacks):
    """The run's callbacks in the order they must run, the caller's wrapped ``OncePerRun``.

    Returns (all callbacks, the caller's wrapped ones, the per-fit stopper, what to close).
    """
    config, position, own = run.config, run.position, run.own
    monitor = monitored_metric(run.info)
    callers = [OncePerRun(c) for c in callbacks]
    summaries = TrainingSummaries(own.logs, config.summary_every, position)
    one_epoch = OneEpochPerFit()
    ordered = [
        position,  # first: the others read the step just trained
        *callers,
        LearningRateLogger(),
        keras.callbacks.TerminateOnNaN(),
        run.checkpoint,
        BestModel(run.run_dir.model_path("best"), run.run_dir.best_record_path, monitor, write=run.chief,
                  best=_previous_best(run, monitor)),
    ]
    if config.attention_warmup:
        ordered.append(AttentionWarmup(config.attention_warmup, run.steps, position=position))
    closers = [summaries]
    if config.attention_images and run.chief:
        images, labels = _fixed_batch(run.validation, config.attention_images)
        attention_images = AttentionImages(
            own.logs, images, labels, run.info.class_names, multi_label=run.info.multi_label,
            every=config.attention_images_every, position=position,
        )
        ordered.append(attention_images)
        closers.append(attention_images)
    ordered.append(summaries)  # after those that add to the logs
    if _progress(config)[1] and run.chief:
        ordered.append(EpochLine(config.epochs, position))
    ordered.append(one_epoch)  # last: stops the fit
    return ordered, callers, one_epoch, closers


def _train_epochs(run, ordered, callers, one_epoch):
    """One ``fit`` per epoch over that epoch's batches; returns the history of every epoch run."""
    history = {}
    start_epoch, start_step = run.start
    try:
        _fit_epochs(run, ordered, one_epoch, history, start_epoch, start_step)
    finally:  # the caller's callbacks end as after one fit (CSVLogger closes its file), whatever happened
        for caller in callers:
            caller.finish({k: v[-1] for k, v in history.items()})
    return history


def _fit_epochs(run, ordered, one_epoch, history, start_epoch, start_step):
    """The epochs, each one ``fit`` call; ``history`` gathers their logs."""
    config, model, steps = run.config, run.model, run.steps
    for epoch in range(start_epoch, config.epochs):
        skip = start_step if epoch == start_epoch else 0
        fit = model.fit(
            run.stream.batches(epoch * steps + skip, steps - skip),
            epochs=config.epochs,
            initial_epoch=epoch,
            steps_per_epoch=steps - skip,
            validation_data=run.validation,
            validation_steps=_steps(run, "validation"),
            callbacks=ordered,
            verbose=_progress(config)[0],
            shuffle=False,  # the pipeline shuffles
        )
        for key, values in fit.history.items():
            history.setdefault(key, []).extend(values)
        if not np.isfinite(history.get("loss", [0.0])[-1]):
            raise ValueError(
                f"Training diverged (NaN loss) in epoch {epoch + 1}; the run is not marked "
                "finished. Lower --learning_rate, or check the data."
            )
        if one_epoch.stopped_by_callback or not run.position.epoch_complete:
            break  # a callback stopped training


def _test_results(run, final_results):
    """final.keras and best.keras on the test split, looked at only now."""
    test, steps = run.test, _steps(run, "test")
    results = {"final": final_results(test, steps)}
    best_path = run.run_dir.model_path("best")
    # Under several workers every one must evaluate the same models in step; best.keras is the
    # chief's and may not be in place for all of them: evaluate it with scripts/evaluate.py.
    if os.path.exists(best_path) and not multi_worker(run.strategy):
        with run.strategy.scope():
            best = keras.models.load_model(best_path)
        results["best"] = {
            k: float(v) for k, v in best.evaluate(test, steps=steps, verbose=0, return_dict=True).items()
        }
    return results


def _finish(run, history, train_seconds):
    """Evaluate the final model on validation and both models on test, save final.keras, and
    write metrics.json (which marks the run done), every number under the split it is from and
    the examples it was computed on (``examples`` of ``split_examples``: fewer under --eval_steps)."""
    model = run.model

    def final_results(dataset, steps):
        return {k: float(v) for k, v in model.evaluate(dataset, steps=steps, verbose=0, return_dict=True).items()}

    validation = final_results(run.validation, _steps(run, "validation"))
    monitor = monitored_metric(run.info)
    atomic_save_model(model, run.own.model_path("final"))
    epoch, step = run.start
    splits = run.stream.splits.describe()
    counted = {which: dict(zip(("examples", "split_examples"), _evaluated(run, which))) for which in splits}
    summary = {
        "splits": splits,
        "validation": {"split": splits["validation"], **counted["validation"], "final": validation,
                       "best": run.run_dir.best_record()},
        "test": {"split": splits["test"], **counted["test"], **_test_results(run, final_results)},
        "selected_on": monitor,
        "history": {k: [float(x) for x in v] for k, v in history.items()},
        "epochs_run": len(history.get("loss", [])),
        "resumed_at": {"epoch": epoch, "step": step} if run.action == "resume" else None,
        "optimizer_steps": int(model.optimizer.iterations.numpy()),
        "train_seconds": train_seconds,
        "num_replicas": run.strategy.num_replicas_in_sync,
        "dataset": {
            "name": run.info.name, "num_classes": run.info.num_classes, "class_names": list(run.info.class_names),
            "train_examples": run.info.num_examples, "validation_examples": run.validation_info.num_examples,
            "test_examples": run.test_info.num_examples,
        },
    }
    if run.chief:
        atomic_write_json(run.run_dir.metrics_path, summary)
    return summary


def run_training(config: TrainConfig, callbacks=(), header=()):
    """Train (or resume) the run described by ``config``; return the final metrics dict.

    ``callbacks`` are added to the run's own; ``header`` lines are recorded at the head of
    flags.txt (the recipe the options came from). Each epoch is one ``model.fit`` call on
    that epoch's batches of the ``TrainingStream`` (a fit covering all epochs could not
    start an epoch at a given step or give an epoch its own order); ``initial_epoch`` and
    ``epochs`` are the run's, so Keras's progress bar counts the run's epochs. ``callbacks``
    still see one ``on_train_begin`` and one ``on_train_end`` per run (``OncePerRun``), so
    Keras's EarlyStopping and ReduceLROnPlateau keep their state across epochs.

    Faults: the run folder is locked for the run (``RunLockedError`` for a second one) and
    checked only after the options, the data and the network (a refused run touches nothing in
    it); SIGTERM/SIGINT write a step checkpoint and raise ``RunInterrupted``; a damaged newest
    checkpoint is set aside for the one before it; a diverged epoch writes no best.keras and
    raises ValueError; a failed checkpoint write raises ``CheckpointError`` with the previous
    checkpoint intact.
    """
    config.validate()
    strategy = _set_up_runtime(config)
    run = _Run(config, strategy, RunDir(config.model_dir), is_chief(strategy))
    _load_own_model(run)
    _read_run_folder(run)
    lock = RunLock(run.run_dir)
    try:
        _load_data(run)  # the inputs first: a wrong dataset or folder is reported before the run folder
        _build_model(run)
        _open_run(run, lock, header)
        _announce(run)
        ordered, callers, one_epoch, closers = _callbacks(run, callbacks)
        stopper = StopOnSignal(run.checkpoint, run.position)
        ordered.insert(len(ordered) - 1, stopper)  # after the checkpoint and TensorBoard, before the per-fit stop
        started = time.time()
        try:
            # Under several workers a signal stops the worker: they would stop at different steps.
            with contextlib.nullcontext() if multi_worker(strategy) else stopper:
                history = _train_epochs(run, ordered, callers, one_epoch)
        finally:
            for closer in closers:
                closer.close()
        return _finish(run, history, time.time() - started)
    except BaseException:
        lock.discard_if_unused()
        raise
    finally:
        lock.release()


def _fixed_batch(dataset, count):
    """The first ``count`` images and labels of ``dataset`` (the attention panels' images)."""
    images, labels = [], []
    for batch in dataset:
        images.append(batch[0].numpy())
        labels.append(batch[1].numpy())
        if sum(len(i) for i in images) >= count:
            break
    return np.concatenate(images)[:count], np.concatenate(labels)[:count]
