"""Every option of a training run, in one dataclass that also defines the command-line flags.

``scripts/train.py`` turns these fields into absl flags (``define_flags``) and back
(``from_flags``); the study script builds ``TrainConfig`` objects directly. One list of
options, one place for their help text, defaults, group in ``--help``, allowed values and role
(the field's metadata: ``check``, ``part_of_run``, and the recipes' ``from_recipe``,
``backbone_option``, ``changes_method``). Help texts that list datasets or backbones are
generated from their registries.
"""

import dataclasses
import json
import os
import textwrap

from absl import flags

from icasc_tf.attention import TRAINABLE_ATTENTIONS
from icasc_tf.backbones import BACKBONES, check_weights, imagenet_weights_help
from icasc_tf.backbones.efficientnet_lite import NATIVE_SIZES
from icasc_tf.data.registry import AUGMENTATIONS, SPECS
from icasc_tf.method import check_hyperparameters
from icasc_tf.model import BN_MODES
from icasc_tf.painless import REDUCTIONS
from icasc_tf.train.own_model import PIXEL_SCALE_HELP, PIXEL_SCALES, is_model_file

_CHOICES = "choices"
_GROUP = "group"
_CHECK = "check"
# The groups of ``--help``, in order.
GROUPS = ("data", "model", "ICASC", "training", "output")


@dataclasses.dataclass(frozen=True)
class Check:
    """The values an option accepts: ``--name must be <requirement>; got <value>.`` otherwise."""

    accepts: object  # value -> bool
    requirement: str


POSITIVE = Check(lambda v: v > 0, "positive")
NON_NEGATIVE = Check(lambda v: v >= 0, ">= 0")
SHARE = Check(lambda v: 0.0 <= v < 1.0, "in [0, 1)")


def _opt(group, default, help_text, choices=None, **roles):
    """A field with its help, group and roles (``check``, ``part_of_run``, ...) as metadata."""
    metadata = {"help": help_text, _GROUP: group, **roles}
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


def _augmentation_help():
    """Which datasets each augmentation is the own of, from the dataset registry."""
    users = {}
    for name, spec in SPECS.items():
        users.setdefault(spec.augmentation, []).append(name)
    own = "; ".join(f"{a}: {', '.join(users[a])}" for a in AUGMENTATIONS if a in users)
    return (f"Augmentation of the training images (and how evaluation resizes): {', '.join(AUGMENTATIONS)}; "
            f"'' = the dataset's own ({own}).")


def _manual_dir_help():
    """What --manual_dir holds for which dataset, from the dataset registry."""
    sources = [name for name, spec in SPECS.items() if spec.manual_files]
    folders = [name for name, spec in SPECS.items() if spec.config_from_manual_dir]
    return (f"Folder of the source files TFDS cannot download, for {', '.join(sources)} (a missing file is "
            f"named with where to get it); for {', '.join(folders)}: your images, one sub-folder per class "
            "(or train/<class>/ and test/<class>/).")


_SIZES = "/".join(str(size) for size in dict.fromkeys(NATIVE_SIZES.values()))


@dataclasses.dataclass
class TrainConfig:
    """A training run. The defaults train ICASC on the bundled cluttered digits in minutes."""

    # What to train on.
    dataset: str = _data("cluttered_digits", "Dataset name: " + ", ".join(SPECS) + ".")
    dataset_config: list = _data([], "Dataset builder options as key=value, e.g. train_per_class=60.")
    train_split: str = _data("train", "TFDS split to train on.")
    validation_share: float = _data(0.1, "Share of --train_split held out (seeded, stratified by class) to validate on "
                                    "and choose best.keras; 0 validates on the test split instead (warned: best.keras "
                                    "is then chosen on the split the results are reported on).", check=SHARE)
    validation_split: str = _data("", "A TFDS split to validate on instead of the held-out share (default: the "
                                  "dataset's official validation split, ImageNet's and VOC's).")
    test_split: str = _data("", "TFDS split reported at the end, for final.keras and best.keras (default: the "
                            "dataset's test split).")
    image_size: int = _data(0, "Input size in pixels; 0 = the dataset's default (photo datasets fine-tuning an "
                            f"ImageNet EfficientNet-Lite: the backbone's own, {_SIZES}).", check=NON_NEGATIVE)
    augmentation: str = _data("", _augmentation_help(), ("",) + tuple(AUGMENTATIONS))
    data_dir: str = _data("", "TFDS data folder (default ~/tensorflow_datasets).", part_of_run=False)
    manual_dir: str = _data("", _manual_dir_help(), part_of_run=False)
    # The network.
    arch: str = _model("resnet20", "Backbone: " + ", ".join(BACKBONES) + "; or your own saved Keras classifier, a "
                       "path ending in .keras (a pretrained base nested in it included; README, Your own Keras "
                       "model).", backbone_option=True)
    arch_options: list = _model([], "Backbone options as key=value, e.g. depth=16,width=4 for wrn.",
                                backbone_option=True)
    weights: str = _model("", f"Pretrained backbone weights: 'imagenet' ({imagenet_weights_help()}) or a local "
                          ".keras/.weights.h5/.h5 file.",
                          from_recipe=False)  # the user's to give
    inner_layer: str = _model("", "ICASC's inner feature map: a layer name, or a path through nested models "
                              "(base/block_13_expand_relu); default the backbone's own, for a .keras model the last "
                              "map at twice the last one's resolution.", backbone_option=True)
    last_layer: str = _model("", "ICASC's last feature map (name or path); default the backbone's own, for a .keras "
                             "model the last map before its spatial pooling.", backbone_option=True)
    pixel_scale: int = _model(0, f"With --arch=FILE.keras: {PIXEL_SCALE_HELP}.",
                              check=Check(lambda v: v in (0,) + PIXEL_SCALES, "1 or 255 (0: not given)"),
                              backbone_option=True)
    painless_depth: int = _model(0, "Painless attention: number of attention modules (0 = none).",
                                 check=NON_NEGATIVE, changes_method=True)
    painless_width: int = _model(1, "Painless attention: heads per module.", check=POSITIVE)
    painless_reduction: str = _model("avg", "Painless attention output-head reduction.", REDUCTIONS)
    painless_gamma: float = _model(0.1, "Weight of the painless mask regulariser L_R.", check=NON_NEGATIVE)
    # The method.
    baseline: bool = _icasc(False, "Train the plain classifier (all attention loss weights 0).", changes_method=True)
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
    attention_warmup: float = _icasc(0.0, "Epochs over which the attention losses ramp from 0 to full weight.",
                                     check=NON_NEGATIVE)
    # Optimisation and hardware.
    epochs: int = _training(6, "Training epochs.", check=POSITIVE)
    batch_size: int = _training(64, "Global batch size (split over the replicas).", check=POSITIVE)
    learning_rate: float = _training(0.1, "Initial learning rate.", check=POSITIVE)
    momentum: float = _training(0.9, "SGD momentum.", check=NON_NEGATIVE)
    nesterov: bool = _training(False, "Nesterov momentum.")
    weight_decay: float = _training(5e-4, "PyTorch-style SGD weight decay, as L2 on kernels.", check=NON_NEGATIVE)
    lr_schedule: str = _training(
        "cosine", "step: x lr_decay at lr_boundaries; cosine: one cycle.", ("step", "cosine", "constant")
    )
    lr_boundaries: list = _training([], "Epochs at which the step schedule decays, e.g. 81,122.")
    lr_decay: float = _training(0.1, "Factor of each step decay.", check=POSITIVE)
    lr_step_every: int = _training(0, "Step schedule: decay every N epochs (instead of lr_boundaries).",
                                   check=NON_NEGATIVE)
    head_lr_multiplier: float = _training(
        1.0, "Learning-rate factor of the classifier and painless modules (fine-tuning: 10)."
    )
    seed: int = _training(0, "Random seed of weights, data order and augmentation.")
    deterministic: bool = _training(False, "Deterministic input order and ops (slower).")
    steps_per_epoch: int = _training(0, "Steps per epoch; 0 = one pass over the training split.", check=NON_NEGATIVE)
    eval_steps: int = _training(0, "Batches of each evaluation (the validation split every epoch, both splits at "
                                "the end); 0 = the whole split. A partial evaluation says so: 'on N of M images' "
                                "in the console, metrics.json and the done line.", check=NON_NEGATIVE)
    strategy: str = _training("auto", "Distribution strategy: auto mirrors over all visible GPUs.",
                              ("auto", "mirrored", "multi_worker", "one_device"), part_of_run=False)
    mixed_precision: bool = _training(False, "mixed_float16 compute (GPUs).")
    jit_compile: bool = _training(False, "XLA-compile the train step.")
    # Where the run goes and what it writes.
    model_dir: str = _output("runs/default", "Folder of the run: flags, checkpoints, logs, best model, metrics.",
                             part_of_run=False)
    summary_every: int = _output(50, "TensorBoard batch scalars every N steps (epoch scalars, the learning rate "
                                 "and the attention images are written at every epoch end regardless).",
                                 check=POSITIVE, part_of_run=False)
    attention_images: int = _output(6, "Validation images in the TensorBoard attention panels (0 = off).",
                                    check=NON_NEGATIVE, part_of_run=False)
    attention_images_every: int = _output(0, "Also write the attention images every N steps during an epoch "
                                          "(tag attention_steps/NN, step = optimizer steps); 0 = at epoch ends "
                                          "only.", check=NON_NEGATIVE, part_of_run=False)
    checkpoint_every: int = _output(0, "Also checkpoint (weights, optimizer, position) every N steps, so a killed "
                                    "run resumes mid-epoch; 0 = at epoch ends only.", check=NON_NEGATIVE,
                                    part_of_run=False)
    overwrite: bool = _output(False, "Move an existing finished run in model_dir aside and start again.",
                              part_of_run=False)
    verbose: int = _output(1, "Keras progress: 1 a bar on a terminal (one plain line per epoch when the output "
                           "is redirected), 2 Keras's two lines per epoch, 0 silent.", part_of_run=False)

    # -------------------------------------------------------------- derived values
    def hyperparameters(self):
        """``(loss weights, sigma, omega, theta)`` as floats, refused outside their meaningful range by
        ``icasc_tf.method.check_hyperparameters`` (the ranges' one home; ``ICASC`` calls it too)."""
        weights = (0.0, 0.0, 0.0) if self.baseline else self.loss_weights
        return check_hyperparameters(weights, self.sigma, self.omega, self.theta, prefix="--")

    def float_loss_weights(self):
        return self.hyperparameters()[0]

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
        """Reject values no run can use, naming each flag: one problem raises as it is, several are
        one ``ValueError`` listing them all."""
        problems = self.problems()
        if len(problems) == 1:
            raise problems[0]
        if problems:
            raise ValueError(" ".join(str(problem) for problem in problems))
        return self

    def problems(self):
        """Every option no run can use, as the exceptions that say so (in field order)."""
        found = []
        for f in dataclasses.fields(self):
            value, check, choices = getattr(self, f.name), f.metadata.get(_CHECK), f.metadata.get(_CHOICES)
            if check and not check.accepts(value):
                found.append(ValueError(f"--{f.name} must be {check.requirement}; got {value}."))
            if choices and value not in choices:
                listed = ", ".join(c or "'' (the dataset's own)" for c in choices)
                found.append(ValueError(f"--{f.name}={value!r}: choose one of {listed}."))
        if self.dataset not in SPECS:
            found.append(ValueError(f"--dataset={self.dataset}: unknown; choose one of {', '.join(SPECS)}."))
        if self.arch not in BACKBONES and not is_model_file(self.arch):
            found.append(ValueError(f"--arch={self.arch}: unknown; choose one of {', '.join(BACKBONES)}, or give a "
                                    "saved Keras classifier (a path ending in .keras)."))
        checks = [self._check_model_dir, self.hyperparameters, self._check_lr_boundaries,
                  lambda: self.options("dataset_config"), lambda: self.options("arch_options")]
        if self.arch in BACKBONES:
            checks.append(self._check_weights)
        found += self._own_model_problems() if is_model_file(self.arch) else (
            [ValueError("--pixel_scale applies to --arch=FILE.keras only: a registered backbone takes [0, 1].")]
            if self.pixel_scale else [])
        for check in checks:
            try:
                check()
            except (ValueError, FileNotFoundError) as error:
                found.append(error)
        return found

    def _own_model_problems(self):
        """What a saved model as --arch cannot be combined with."""
        problems = []  # whether the file exists is the run's to check (a resumed run has its copy)
        if not self.pixel_scale:
            problems.append(ValueError(f"--arch={self.arch}: say which pixels it takes, --pixel_scale: "
                                       f"{PIXEL_SCALE_HELP}."))
        given = [name for name in ("weights", "arch_options", "painless_depth") if getattr(self, name)]
        if given:
            problems.append(ValueError(
                f"--{', --'.join(given)} {'applies' if len(given) == 1 else 'apply'} to the registered backbones: "
                f"--arch={self.arch} brings its own weights and layers."))
        if self.mixed_precision:
            problems.append(ValueError(
                f"--mixed_precision cannot change --arch={self.arch}: a saved model's layers keep the precision they "
                "were saved with; train it without --mixed_precision."))
        return problems

    def _check_weights(self):
        try:
            check_weights(self.arch, self.weights or None)
        except (ValueError, FileNotFoundError) as error:
            raise type(error)(f"--weights={self.weights}: {error}") from None

    def _check_model_dir(self):
        if os.path.exists(self.model_dir) and not os.path.isdir(self.model_dir):
            raise ValueError(
                f"--model_dir={self.model_dir} is a file, not a folder: name a folder for the run (a new one is "
                "created)."
            )

    def _check_lr_boundaries(self):
        try:
            [float(b) for b in self.lr_boundaries]
        except ValueError:
            raise ValueError(f"--lr_boundaries takes epochs as numbers; got {self.lr_boundaries}.") from None

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


def _with_role(role, default=False):
    """The options whose metadata gives ``role`` a value other than ``default``, in field order."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get(role, default) != default)


# Options that may differ between a run and its resumption (where things are, how it is logged,
# which hardware: ``part_of_run=False``); everything else defines the run, epochs included (the
# learning rate schedule depends on it).
NOT_PART_OF_RUN = _with_role("part_of_run", default=True)
# The recipes' roles (``icasc_tf.train.recipes``): never taken from a recipe; not carried over to
# another backbone; set by the recipes of another arm (never picked as a dataset's recipe).
NOT_FROM_RECIPE = _with_role("from_recipe", default=True)
BACKBONE_OPTIONS = _with_role("backbone_option")
METHOD_CHANGES = _with_role("changes_method")


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
