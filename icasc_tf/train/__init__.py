"""The training application: a run from a ``TrainConfig`` (``run_training``), the paper's recipes
(``flags/``), the run folder (``RunDir``) and the run's callbacks. The library (``icasc_tf.ICASC``
in your own ``fit``) never imports this package."""

from icasc_tf.train.config import TrainConfig
from icasc_tf.train.run import run_training
from icasc_tf.train.run_dir import RunDir, RunDirError, RunExistsError

__all__ = ["RunDir", "RunDirError", "RunExistsError", "TrainConfig", "run_training"]
