"""Every option of a training run, in one dataclass that also defines the command-line flags.

``scripts/train.py`` turns these fields into absl flags (``define_flags``) and back
(``from_flags``); the study script builds ``TrainConfig`` objects directly. One list of
options, one place for their help text and defaults.
"""

import dataclasses
import json

from absl import flags

_CHOICES = "choices"


def _opt(default, help_text, choices=None):
    metadata = {"help": help_text}
    if choices is not None:
        metadata[_CHOICES] = tuple(choices)
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class TrainConfig:
    """A training run. The defaults train ICASC on the bundled cluttered digits in minutes."""

    # What to train.
    dataset: str = _opt("cluttered_digits", "Dataset name (see icasc_tf.data.DATASETS).")
    dataset_config: list = _opt([], "Dataset builder options as key=value, e.g. train_per_class=60.")
    train_split: str = _opt("train", "TFDS split to train on.")
    eval_split: str = _opt("test", "TFDS split to validate and evaluate on.")
    image_size: int = _opt(0, "Input size in pixels; 0 = the dataset's default.")
    arch: str = _opt("resnet20", "Backbone name (see icasc_tf.backbones.BACKBONES).")
    arch_options: list = _opt([], "Backbone options as key=value, e.g. depth=16,width=4 for wrn.")
    weights: str = _opt("", "Pretrained backbone weights: 'imagenet' (vgg19, resnet50, resnet101, through the "
                        "Keras cache) or a local .keras/.weights.h5/.h5 file.")
    # The method.
    baseline: bool = _opt(False, "Train the plain classifier (all attention loss weights 0).")
    attention: str = _opt("ach", "Attention map of the losses.", ("ach", "gradcam", "apx"))
    loss_weights: list = _opt(["1", "1", "1"], "Weights of L_AS^in, L_AS^la, L_AC.")
    bn_mode: str = _opt("batch", "BatchNormalization handling of the attention pass (METHOD 1.1).", ("batch", "exact"))
    sigma: float = _opt(0.55, "Mask threshold, as a fraction of the map's maximum.")
    omega: float = _opt(100.0, "Mask sharpness.")
    theta: float = _opt(0.8, "Attention-consistency target.")
    mask_gradient: bool = _opt(False, "Let gradients flow through the target mask.")
    second_order: bool = _opt(True, "Differentiate the attention losses through dY/dF (the paper); "
                              "--nosecond_order detaches the class-score gradients (first order).")
    attention_warmup: float = _opt(0.0, "Epochs over which the attention losses ramp from 0 to full weight.")
    painless_depth: int = _opt(0, "Painless attention: number of attention modules (0 = none).")
    painless_width: int = _opt(1, "Painless attention: heads per module.")
    painless_reduction: str = _opt("avg", "Painless attention output-head reduction.", ("avg", "projection"))
    painless_gamma: float = _opt(0.1, "Weight of the painless mask regulariser L_R.")
    # Optimisation.
    epochs: int = _opt(6, "Training epochs.")
    batch_size: int = _opt(64, "Global batch size (split over the replicas).")
    learning_rate: float = _opt(0.1, "Initial learning rate.")
    momentum: float = _opt(0.9, "SGD momentum.")
    nesterov: bool = _opt(False, "Nesterov momentum.")
    weight_decay: float = _opt(5e-4, "PyTorch-style SGD weight decay, as L2 on kernels.")
    lr_schedule: str = _opt(
        "cosine", "step: x lr_decay at lr_boundaries; cosine: one cycle.", ("step", "cosine", "constant")
    )
    lr_boundaries: list = _opt([], "Epochs at which the step schedule decays, e.g. 81,122.")
    lr_decay: float = _opt(0.1, "Factor of each step decay.")
    lr_step_every: int = _opt(0, "Step schedule: decay every N epochs (instead of lr_boundaries).")
    head_lr_multiplier: float = _opt(
        1.0, "Learning-rate factor of the classifier and painless modules (fine-tuning: 10)."
    )
    # Where and how.
    model_dir: str = _opt("runs/default", "Folder of the run: flags, checkpoints, logs, best model, metrics.")
    data_dir: str = _opt("", "TFDS data folder (default ~/tensorflow_datasets).")
    manual_dir: str = _opt("", "Folder of manually downloaded archives (ImageNet, Caltech-256).")
    seed: int = _opt(0, "Random seed of weights, data order and augmentation.")
    deterministic: bool = _opt(False, "Deterministic input order and ops (slower).")
    strategy: str = _opt("auto", "Distribution strategy.", ("auto", "mirrored", "multi_worker", "one_device"))
    mixed_precision: bool = _opt(False, "mixed_float16 compute (GPUs).")
    jit_compile: bool = _opt(False, "XLA-compile the train step.")
    steps_per_epoch: int = _opt(0, "Steps per epoch; 0 = one pass over the training split.")
    eval_steps: int = _opt(0, "Validation steps; 0 = the whole split.")
    summary_every: int = _opt(50, "TensorBoard batch scalars every N steps (epoch scalars, the learning rate "
                              "and the attention images are written at every epoch end regardless).")
    attention_images: int = _opt(6, "Validation images in the TensorBoard attention grid (0 = off).")
    attention_images_every: int = _opt(0, "Also write the attention images every N steps during an epoch "
                                       "(tag attention_steps/NN, step = optimizer steps); 0 = at epoch ends only.")
    checkpoint_every: int = _opt(0, "Also checkpoint (weights, optimizer, position) every N steps, so a killed run "
                                 "resumes mid-epoch; 0 = at epoch ends only.")
    overwrite: bool = _opt(False, "Move an existing finished run in model_dir aside and start again.")
    verbose: int = _opt(1, "Keras progress: 1 bar, 2 one line per epoch, 0 silent.")

    # -------------------------------------------------------------- derived values
    def float_loss_weights(self):
        if self.baseline:
            return (0.0, 0.0, 0.0)
        try:
            weights = tuple(float(w) for w in self.loss_weights)
        except ValueError:
            weights = ()
        if len(weights) != 3:
            raise ValueError(
                f"--loss_weights needs three numbers (L_AS^in, L_AS^la, L_AC); got {self.loss_weights}."
            )
        return weights

    def options(self, field_name):
        """Parse a key=value list option into a dict (ints and floats converted)."""
        parsed = {}
        for item in getattr(self, field_name):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--{field_name} takes key=value items; got {item!r}.")
            parsed[key.strip()] = _number(value.strip())
        return parsed

    def validate(self):
        """Reject values no run can use, naming the flag."""
        for name in ("epochs", "batch_size", "learning_rate", "lr_decay", "summary_every", "painless_width"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive; got {getattr(self, name)}.")
        for name in ("steps_per_epoch", "eval_steps", "image_size", "painless_depth", "attention_images",
                     "attention_images_every", "checkpoint_every", "lr_step_every", "weight_decay", "momentum",
                     "painless_gamma", "attention_warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0; got {getattr(self, name)}.")
        for f in dataclasses.fields(self):
            choices = f.metadata.get(_CHOICES)
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"--{f.name}={getattr(self, f.name)!r}: choose one of {', '.join(choices)}.")
        from icasc_tf.backbones import BACKBONES
        from icasc_tf.data import DATASETS

        for name, known in (("dataset", DATASETS), ("arch", BACKBONES)):
            if getattr(self, name) not in known:
                raise ValueError(f"--{name}={getattr(self, name)}: unknown; choose one of {', '.join(known)}.")
        from icasc_tf.backbones import check_weights

        try:
            check_weights(self.arch, self.weights or None)
        except (ValueError, FileNotFoundError) as error:
            raise type(error)(f"--weights={self.weights}: {error}") from None
        self.float_loss_weights()
        self.options("dataset_config")
        self.options("arch_options")
        try:
            [float(b) for b in self.lr_boundaries]
        except ValueError:
            raise ValueError(f"--lr_boundaries takes epochs as numbers; got {self.lr_boundaries}.") from None
        return self

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def to_flagfile(self, header=()):
        """The options as a flagfile (``--flagfile=`` repeats the run); ``header``: comment lines."""
        lines = [f"# {line}" for line in header]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                value = str(value).lower()
            lines.append(f"--{f.name}={value}")
        return "\n".join(lines) + "\n"


def _number(text):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


# These fields may differ between a run and its resumption (where things are, how it is
# logged, which hardware); everything else defines the run, epochs included (the learning
# rate schedule depends on it).
NOT_PART_OF_RUN = (
    "overwrite", "verbose", "model_dir", "data_dir", "manual_dir", "strategy",
    "summary_every", "attention_images", "attention_images_every", "checkpoint_every",
)


def define_flags(flag_values=flags.FLAGS):
    """One absl flag per ``TrainConfig`` field, with its default and help."""
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata["help"]
        if f.metadata.get(_CHOICES):
            define, args = flags.DEFINE_enum, (list(f.metadata[_CHOICES]),)
        elif isinstance(default, bool):
            define, args = flags.DEFINE_bool, ()
        elif isinstance(default, int):
            define, args = flags.DEFINE_integer, ()
        elif isinstance(default, float):
            define, args = flags.DEFINE_float, ()
        elif isinstance(default, list):
            define, args = flags.DEFINE_list, ()
        else:
            define, args = flags.DEFINE_string, ()
        define(f.name, default, *args, help_text, flag_values=flag_values)


def from_flags(flag_values):
    return TrainConfig(**{f.name: flag_values[f.name].value for f in dataclasses.fields(TrainConfig)})
