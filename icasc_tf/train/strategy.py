"""The distribution strategy of a run, and which worker writes the run folder."""

import os

import tensorflow as tf


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


def task_id(strategy):
    """This worker's index (0 without a cluster)."""
    return getattr(getattr(strategy, "cluster_resolver", None), "task_id", 0) or 0
