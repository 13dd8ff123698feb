"""The papers' recipes as the defaults of a run: ``--dataset`` (and ``--arch``) pick one.

The recipes are the flagfiles in the repository's ``flags/`` folder (docs/method.md §1.7), read
at run time: they are the one copy of their values. ``scripts/train.py`` calls
``resolve(FLAGS, sys.argv)``; tests call ``config_from_argv(argv)``, the same code path.

Rules, when the command line has no ``--flagfile``:
- ``--dataset`` not given, or a dataset whose ``DatasetSpec`` names no ``recipe`` (the bundled
  ``cluttered_digits``, your ``image_folder``, ...): ``TrainConfig``'s defaults
  (``flags/default.flags`` repeats them), no recipe.
- ``--dataset=D`` without ``--arch``: D's recipe (``DatasetSpec.recipe`` in the dataset
  registry), its backbone included.
- ``--dataset=D --arch=A``: the flagfile for D and A. Several (Caltech-256 at 30 and 60
  images per class): the one whose ``--dataset_config`` the command line gives, else the
  first by file name (``_n30`` before ``_n60``). None: D's designated recipe without its
  backbone options (``--arch``, ``--arch_options``), with ``--model_dir=runs/D_A``.
- Recipes that change the method (options marked ``changes_method`` in ``TrainConfig``:
  ``--baseline``, painless attention) and the study's regimes (``study_*.flags``, for
  ``scripts/study.py``) are never picked.
- Taken from a recipe: every flag it sets except those marked ``from_recipe=False``
  (``--weights``: the pretrained file is the user's to give), ``--model_dir`` included. A flag
  given on the command line wins.
- The run prints one line naming the recipe (``recipe_line``); a fine-tuning recipe (one
  that sets ``--weights``: Caltech-256, CUB, VOC) without ``--weights`` also warns that
  from-scratch numbers are not comparable with the paper's.

With ``--flagfile`` no recipe applies (the flagfile is the recipe). A flag given more than
once (in a flagfile and on the command line, or twice) takes absl's value, the last one,
and a note says which.

Where ``flags/`` is found: ``$ICASC_TF_FLAGS_DIR`` if set; else the copy installed with the
package (``icasc_tf.flags``: the repository's ``flags/`` for ``pip install -e .``, a copy inside the
package for ``pip install .``); else ``flags/`` beside the package (a checkout on ``PYTHONPATH``).
"""

import dataclasses
import functools
import glob
import importlib.util
import os

from absl import flags

from icasc_tf.backbones import IMAGENET_BACKBONES, REGISTRY
from icasc_tf.backbones.efficientnet_lite import NATIVE_SIZES
from icasc_tf.data.registry import AUGMENTATION_SPECS, SPECS, get_spec
from icasc_tf.train import config as run_config
from icasc_tf.train.config import BACKBONE_OPTIONS, METHOD_CHANGES, NOT_FROM_RECIPE
from icasc_tf.train.own_model import is_model_file, model_name
from icasc_tf.train.run_dir import RunDir

FLAGS_DIR_ENV = "ICASC_TF_FLAGS_DIR"
REPO_FLAGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "flags")
STUDY_PREFIX = "study_"  # the study's regimes (scripts/study.py --flagfile=...): never picked


@dataclasses.dataclass(frozen=True)
class Recipe:
    path: str
    title: str  # the flagfile's first comment line
    values: dict  # the flags it sets, parsed (typed) by the run's own flag definitions

    @property
    def name(self):
        return os.path.splitext(os.path.basename(self.path))[0]

    @property
    def shown_path(self):
        if os.path.dirname(self.path) == REPO_FLAGS_DIR:
            return os.path.join("flags", os.path.basename(self.path))
        return self.path

    @property
    def fine_tunes(self):
        return bool(self.values.get("weights"))


@dataclasses.dataclass
class Resolution:
    """What ``resolve`` decided: the config, and the lines to print."""

    config: run_config.TrainConfig
    recipe: Recipe | None = None
    recipe_line: str = ""  # printed on stdout and recorded at the head of flags.txt
    notes: list = dataclasses.field(default_factory=list)  # stdout
    warnings: list = dataclasses.field(default_factory=list)  # stderr


def flags_dir():
    if os.environ.get(FLAGS_DIR_ENV):
        return os.environ[FLAGS_DIR_ENV]
    spec = importlib.util.find_spec("icasc_tf.flags")
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    return REPO_FLAGS_DIR


def read_flagfile(path):
    """The flags a flagfile sets, as {name: value} parsed like the command line."""
    values = flags.FlagValues()
    run_config.define_flags(values)
    try:
        values(["recipe", f"--flagfile={path}"])
    except flags.Error as error:
        raise ValueError(f"{path}: {error}") from None
    names = [f.name for f in dataclasses.fields(run_config.TrainConfig)]
    with open(path, encoding="utf-8") as f:
        first = f.readline().strip()
    title = first[1:].strip() if first.startswith("#") else ""
    return Recipe(path, title, {n: values[n].value for n in names if values[n].present})


@functools.cache
def _recipes(directory):
    return tuple(read_flagfile(p) for p in sorted(glob.glob(os.path.join(directory, "*.flags"))))


def recipes():
    """Every flagfile of ``flags_dir()`` (read once per process)."""
    directory = flags_dir()
    if not os.path.isdir(directory):
        raise ValueError(
            f"The recipes (flags/*.flags) are not at {directory}. Reinstall icasc_tf (pip install . ships "
            f"them), set {FLAGS_DIR_ENV} to a folder of .flags files, or pass --flagfile=<recipe>."
        )
    return _recipes(directory)


def dataset_recipe(dataset):
    """The name of the recipe a dataset takes when --arch is not given, or has no recipe of its own
    on it (``DatasetSpec.recipe``); None for a dataset without one (or an unknown name, which the
    run's validation reports)."""
    spec = SPECS.get(dataset)
    return spec.recipe if spec is not None else None


def find_recipe(dataset, arch=None, dataset_config=None):
    """``(recipe, same_backbone)`` for a dataset (and backbone), or ``(None, False)``."""
    if dataset_recipe(dataset) is None:
        return None, False
    candidates = [
        r for r in recipes()
        if r.values.get("dataset") == dataset and not any(r.values.get(k) for k in METHOD_CHANGES)
        and not r.name.startswith(STUDY_PREFIX)
    ]
    designated = next((r for r in candidates if r.name == dataset_recipe(dataset)), None)
    if arch is None:
        return designated, designated is not None
    same = [r for r in candidates if r.values.get("arch") == arch]
    if same:
        chosen = [r for r in same if dataset_config is not None and r.values.get("dataset_config") == dataset_config]
        return (chosen or same)[0], True
    return designated, False


def recipe_defaults(recipe, same_backbone, dataset, arch):
    """The values a run takes from ``recipe`` (flags given on the command line still win)."""
    values = {k: v for k, v in recipe.values.items() if k not in NOT_FROM_RECIPE}
    if not same_backbone:
        for key in BACKBONE_OPTIONS:
            values.pop(key, None)
        values["model_dir"] = f"runs/{dataset}_{model_name(arch) if is_model_file(arch) else arch}"
        if is_model_file(arch):
            values.pop("image_size", None)  # a saved model takes the size it was built for
    return values


def _given(flag_values, name):
    return bool(flag_values[name].present)


def resolve(flag_values, argv):
    """The run's ``TrainConfig`` from parsed flags and the raw ``argv`` they came from."""
    config = run_config.from_flags(flag_values)
    resolution = Resolution(config)
    resolution.notes.extend(given_twice(flag_values, argv))
    if not _uses_flagfile(argv) and _given(flag_values, "dataset"):
        arch = config.arch if _given(flag_values, "arch") else None
        dataset_config = config.dataset_config if _given(flag_values, "dataset_config") else None
        recipe, same_backbone = find_recipe(config.dataset, arch, dataset_config)
        if recipe is not None:
            defaults = recipe_defaults(recipe, same_backbone, config.dataset, config.arch)
            taken = {k: v for k, v in defaults.items() if not _given(flag_values, k)}
            resolution.config = dataclasses.replace(config, **taken)
            resolution.recipe = recipe
            resolution.recipe_line = recipe_line(recipe, same_backbone, resolution.config, flag_values)
    config = resolution.config
    saved = None if config.overwrite else RunDir(config.model_dir).saved_options()
    native = native_size_note(config, flag_values, saved)
    if native:
        resolution.config = dataclasses.replace(resolution.config, image_size=native[0])
        resolution.notes.append(native[1])
    warning = fine_tuning_warning(resolution.config)
    if warning:
        resolution.warnings.append(warning)
    return resolution


def native_size_note(config, flag_values, saved=None):
    """``(size, note)`` when a photo dataset fine-tunes an ImageNet EfficientNet-Lite without
    --image_size: the backbone's own resolution (Lite1 240, Lite2 260) rather than the
    dataset's 224. A run of the same dataset and backbone already in the folder (``saved``
    options) keeps its size, so that the command that started it resumes it."""
    resuming = saved and (saved.get("dataset"), saved.get("arch")) == (config.dataset, config.arch)
    if _given(flag_values, "image_size") or config.image_size or config.weights != "imagenet" or resuming:
        return None
    size, spec = NATIVE_SIZES.get(config.arch), get_spec(config.dataset)
    if size is None or not AUGMENTATION_SPECS[spec.augmentation].crops_after_resize or size == spec.image_size:
        return None
    return size, f"image size: {size} px, {config.arch}'s own resolution (--image_size to change it)"


def config_from_argv(argv):
    """``resolve`` on a fresh set of flags: what ``scripts/train.py`` does with ``argv``."""
    values = flags.FlagValues()
    run_config.define_flags(values)
    values(list(argv))
    return resolve(values, argv)


def recipe_line(recipe, same_backbone, config, flag_values):
    """``recipe: <flagfile>, <what> (<what is not taken>)[; overridden on the command line: ...]``."""
    if same_backbone:
        what = f"the paper's recipe for {config.dataset} + {recipe.values.get('arch')} (not its --weights: give yours)"
    else:
        what = (
            f"{config.dataset}'s recipe (none for {config.arch}: not its --arch, --arch_options, --weights; "
            f"--model_dir={config.model_dir})"
        )
    overridden = [
        f"--{k}={_shown(getattr(config, k))}" for k in sorted(recipe.values)
        if k not in (*NOT_FROM_RECIPE, "dataset", "arch") and _given(flag_values, k)
        and getattr(config, k) != recipe.values[k]
    ]
    tail = f"; overridden on the command line: {', '.join(overridden)}" if overridden else ""
    return f"recipe: {recipe.shown_path}, {what}{tail}"


def _shown(value):
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def fine_tuning_warning(config):
    """A warning when a dataset the paper fine-tunes on trains from scratch ('' otherwise)."""
    if config.weights or dataset_recipe(config.dataset) is None:
        return ""
    try:
        designated, _ = find_recipe(config.dataset)
    except ValueError:
        return ""  # no recipes to read: no warning either
    if designated is None or not designated.fine_tunes:
        return ""
    fix = (
        f"--weights=imagenet fine-tunes its ImageNet weights: {REGISTRY[config.arch].imagenet.source}"
        if config.arch in IMAGENET_BACKBONES
        else f"docs/weights.md converts ImageNet weights for {config.arch}"
    )
    return (
        f"warning: the paper fine-tunes ImageNet-pretrained weights on {config.dataset}; without "
        f"--weights this run trains {config.arch} from scratch, and its numbers are not comparable "
        f"with the paper's ({fix})."
    )


# ----------------------------------------------------------------------------- flags given twice
def _uses_flagfile(argv):
    return any(_flag_name(arg) == "flagfile" for arg in argv[1:])


def _flag_name(arg):
    if not arg.startswith("-") or arg in ("-", "--"):
        return None
    return arg.lstrip("-").split("=", 1)[0]


def given_twice(flag_values, argv):
    """Notes on the flags given more than once with different values: absl takes the last."""
    seen = {}
    for source, arg, following in _expanded(flag_values, argv):
        name = _flag_name(arg)
        if name is None:
            continue
        value = arg.split("=", 1)[1] if "=" in arg else None
        if name not in flag_values and name.startswith("no") and name[2:] in flag_values:
            name, value = name[2:], "false"
        if name not in flag_values or name == "flagfile":
            continue
        if value is None:
            value = "true" if flag_values[name].boolean else (following or "")
        seen.setdefault(name, []).append((value, source))
    notes = []
    for name, occurrences in seen.items():
        if len({value for value, _ in occurrences}) > 1:
            listed = ", ".join(f"{value} ({source})" for value, source in occurrences)
            notes.append(f"note: --{name} is given {len(occurrences)} times: {listed}; the last one, "
                         f"{occurrences[-1][0]}, is used.")
    return notes


def _expanded(flag_values, argv):
    """(source, argument, next argument) over argv with its flagfiles inlined, in order."""
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if _flag_name(arg) == "flagfile":
            path = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            try:
                inlined = flag_values.read_flags_from_files(["x", f"--flagfile={path}"], force_gnu=False)[1:]
            except flags.Error:
                continue  # absl reports it when it parses
            for j, inner in enumerate(inlined):
                yield path, inner, inlined[j + 1] if j + 1 < len(inlined) else None
        else:
            yield "command line", arg, args[i + 1] if i + 1 < len(args) else None
