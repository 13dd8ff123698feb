"""The paper's recipes as defaults: --dataset (and --arch) without --flagfile (icasc_tf.train.recipes)."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from absl import flags

from icasc_tf.backbones import IMAGENET_BACKBONES
from icasc_tf.data.registry import SPECS
from icasc_tf.train import RunDir, TrainConfig, recipes
from icasc_tf.train import config as run_config
from icasc_tf.train.recipes import config_from_argv, read_flagfile
from icasc_tf.train.stream import Splits, data_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS_DIR = os.path.join(ROOT, "flags")


def _flagfile(name):
    return read_flagfile(os.path.join(FLAGS_DIR, f"{name}.flags")).values


def _expected(values, **overrides):
    """TrainConfig with a flagfile's values, less --weights, plus overrides."""
    taken = {k: v for k, v in values.items() if k != "weights"}
    return dataclasses.replace(TrainConfig(), **{**taken, **overrides})


def test_dataset_and_arch_take_the_matching_flagfile_without_weights():
    resolution = config_from_argv(["train.py", "--dataset=caltech256", "--arch=vgg19"])
    values = _flagfile("caltech256_vgg19_n30")
    assert values["weights"] and values["learning_rate"] == 0.01 and values["batch_size"] == 16
    assert resolution.config == _expected(values)
    assert resolution.config.weights == "" and resolution.config.model_dir == "runs/caltech256_vgg19_n30"
    assert resolution.recipe_line == (
        "recipe: flags/caltech256_vgg19_n30.flags, the paper's recipe for caltech256 + vgg19 "
        "(not its --weights: give yours)"
    )
    assert resolution.warnings == [
        "warning: the paper fine-tunes ImageNet-pretrained weights on caltech256; without --weights this "
        "run trains vgg19 from scratch, and its numbers are not comparable with the paper's "
        "(--weights=imagenet fine-tunes its ImageNet weights: keras.applications' files, through the Keras cache)."
    ]


def test_explicit_flags_win_over_the_recipe():
    resolution = config_from_argv(
        ["train.py", "--dataset=caltech256", "--arch=vgg19", "--learning_rate=0.05", "--model_dir=/tmp/x",
         "--weights=/w/vgg19.h5"]
    )
    values = _flagfile("caltech256_vgg19_n30")
    assert resolution.config == _expected(values, learning_rate=0.05, model_dir="/tmp/x", weights="/w/vgg19.h5")
    assert resolution.recipe_line.endswith(
        "(not its --weights: give yours); overridden on the command line: --learning_rate=0.05, --model_dir=/tmp/x"
    )
    assert resolution.warnings == []  # weights given: fine-tuning as the paper


def test_dataset_config_picks_among_several_recipes_of_a_backbone():
    resolution = config_from_argv(
        ["train.py", "--dataset=caltech256", "--arch=vgg19", "--dataset_config=train_per_class=60"]
    )
    assert resolution.recipe.name == "caltech256_vgg19_n60"
    assert resolution.config == _expected(_flagfile("caltech256_vgg19_n60"))


def test_a_backbone_without_recipe_takes_the_dataset_recipe_without_its_backbone_options():
    resolution = config_from_argv(["train.py", "--dataset=caltech256", "--arch=resnet50"])
    values = _flagfile("caltech256_resnet18_n30")
    assert resolution.recipe.name == "caltech256_resnet18_n30"
    assert resolution.config == _expected(values, arch="resnet50", model_dir="runs/caltech256_resnet50")
    assert resolution.recipe_line == (
        "recipe: flags/caltech256_resnet18_n30.flags, caltech256's recipe (none for resnet50: not its --arch, "
        "--arch_options, --weights; --model_dir=runs/caltech256_resnet50)"
    )
    assert "trains resnet50 from scratch" in resolution.warnings[0] and "--weights=imagenet" in resolution.warnings[0]
    resnet18 = config_from_argv(["train.py", "--dataset=caltech256"]).warnings[0]
    assert "(docs/weights.md converts ImageNet weights for resnet18)" in resnet18
    # VOC's recipe sets --arch_options=stem=imagenet for resnet18: not carried to resnet50.
    voc = config_from_argv(["train.py", "--dataset=voc2012", "--arch=resnet50"]).config
    assert voc.arch_options == [] and voc.image_size == 299
    assert (Splits.of(voc).validation, Splits.of(voc).test) == ("validation", "validation")  # VOC's official split


def test_dataset_alone_takes_its_designated_recipe_and_method_changing_recipes_are_never_picked():
    resolution = config_from_argv(["train.py", "--dataset=cifar100"])
    assert resolution.config == _expected(_flagfile("cifar100_resnet110"))
    assert resolution.warnings == []  # trained from scratch in the paper too
    # cub200 + wrn has only the painless-attention recipe (--baseline): ICASC gets cub200's own.
    cub = config_from_argv(["train.py", "--dataset=cub200", "--arch=wrn"])
    assert cub.recipe.name == "cub200_resnet50" and not cub.config.baseline and cub.config.painless_depth == 0


def test_cluttered_digits_keeps_the_defaults():
    assert config_from_argv(["train.py"]).config == TrainConfig()
    resolution = config_from_argv(["train.py", "--dataset=cluttered_digits", "--arch=resnet8"])
    assert resolution.config == TrainConfig(arch="resnet8")
    assert resolution.recipe is None and resolution.recipe_line == "" and resolution.warnings == []
    # flags/default.flags repeats TrainConfig's defaults: the two cannot drift apart.
    assert _expected(_flagfile("default")) == TrainConfig()


def test_photos_fine_tune_an_imagenet_lite_at_its_own_resolution_unless_told(tmp_path):
    def resolved(*flags):
        resolution = config_from_argv(["train.py", "--dataset=image_folder", "--weights=imagenet",
                                       f"--model_dir={tmp_path / 'new'}", *flags])
        return resolution.config.image_size, resolution.notes

    size, notes = resolved("--arch=efficientnet_lite2")
    assert size == 260
    assert notes == ["image size: 260 px, efficientnet_lite2's own resolution (--image_size to change it)"]
    assert resolved("--arch=efficientnet_lite1")[0] == 240
    assert resolved("--arch=efficientnet_lite1", "--image_size=200") == (200, [])
    assert resolved("--arch=efficientnet_lite0") == (0, [])  # 224: the folder's own default already
    cifar = config_from_argv(["train.py", "--dataset=cifar100", "--arch=efficientnet_lite2", "--weights=imagenet",
                              "--augmentation=squash", f"--model_dir={tmp_path / 'new'}"])
    assert cifar.config.image_size == 0 and cifar.notes == []  # not a photo dataset: its own 32 px
    scratch = config_from_argv(["train.py", "--dataset=image_folder", "--arch=efficientnet_lite2",
                                f"--model_dir={tmp_path / 'new'}"])
    assert scratch.config.image_size == 0  # from scratch: the dataset's size


def test_augmentation_is_a_flag_passed_to_every_split_of_the_run():
    config = config_from_argv(["train.py", "--augmentation=squash"]).config
    assert config.augmentation == "squash" and data_options(config)["augmentation"] == "squash"
    assert data_options(TrainConfig())["augmentation"] is None  # the dataset's own
    listed = "choose one of '' \\(the dataset's own\\), none, cifar, squash, inception"
    with pytest.raises(ValueError, match=f"--augmentation='crop': {listed}"):
        TrainConfig(augmentation="crop").validate()


def test_a_recorded_run_keeps_its_image_size_and_its_augmentation_means_the_datasets_own(tmp_path):
    folder = str(tmp_path / "run")
    flags_ = ["train.py", "--dataset=image_folder", "--arch=efficientnet_lite2", "--weights=imagenet",
              f"--model_dir={folder}"]
    os.makedirs(folder)
    run = RunDir(folder)
    run.write_options(config_from_argv([*flags_, "--image_size=0"]).config)  # a run from before the native size
    resumed = config_from_argv(flags_)
    assert resumed.config.image_size == 0 and resumed.notes == []  # the same command resumes it
    assert run.changed_options(resumed.config) == []
    assert config_from_argv([*flags_, "--overwrite"]).config.image_size == 260  # a new run
    other = RunDir(str(tmp_path / "other"))  # a folder holding another dataset's run: no resume
    os.makedirs(other.path)
    other.write_options(TrainConfig())
    assert config_from_argv([*flags_[:-1], f"--model_dir={other.path}"]).config.image_size == 260
    cifar = RunDir(str(tmp_path / "cifar"))
    os.makedirs(cifar.path)
    cifar.write_options(TrainConfig(dataset="cifar100"))
    assert cifar.changed_options(TrainConfig(dataset="cifar100", augmentation="cifar")) == []
    assert cifar.changed_options(TrainConfig(dataset="cifar100", augmentation="squash")) == ["augmentation"]


def test_flagfile_runs_as_today_and_flags_given_twice_are_noted():
    path = os.path.join(FLAGS_DIR, "caltech256_vgg19_n30.flags")
    resolution = config_from_argv(["train.py", f"--flagfile={path}", "--learning_rate=0.05"])
    values = _flagfile("caltech256_vgg19_n30")
    assert resolution.recipe is None and resolution.recipe_line == ""
    assert resolution.config == dataclasses.replace(TrainConfig(), **{**values, "learning_rate": 0.05})
    assert resolution.notes == [
        f"note: --learning_rate is given 2 times: 0.01 ({path}), 0.05 (command line); the last one, 0.05, is used."
    ]
    # absl's order: a flagfile after the flag wins.
    later = config_from_argv(["train.py", "--epochs=3", f"--flagfile={path}"])
    assert later.config.epochs == 20 and "the last one, 20, is used" in later.notes[0]
    assert config_from_argv(["train.py", "--epochs", "3", "--epochs=3"]).notes == []  # same value: no note
    flipped = config_from_argv(["train.py", "--baseline", "--nobaseline"])
    assert not flipped.config.baseline and flipped.notes == [
        "note: --baseline is given 2 times: true (command line), false (command line); the last one, false, is used."
    ]


def test_resolved_values_are_what_flags_txt_and_config_json_record(tmp_path):
    resolution = config_from_argv(
        ["train.py", "--dataset=caltech256", "--arch=vgg19", f"--model_dir={tmp_path / 'run'}"]
    )
    RunDir(resolution.config.model_dir).write_options(resolution.config, [resolution.recipe_line])  # as a run does
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved == dataclasses.asdict(resolution.config)
    flags_txt = (tmp_path / "run" / "flags.txt").read_text()
    assert f"# {resolution.recipe_line}\n" in flags_txt and "--learning_rate=0.01\n" in flags_txt
    again = flags.FlagValues()
    run_config.define_flags(again)
    again(["train.py", f"--flagfile={tmp_path / 'run' / 'flags.txt'}"])
    assert run_config.from_flags(again) == resolution.config  # --flagfile=flags.txt repeats the run


def test_recipes_folder_not_found_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(recipes.FLAGS_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="ICASC_TF_FLAGS_DIR"):
        config_from_argv(["train.py", "--dataset=caltech256"])
    assert config_from_argv(["train.py"]).config == TrainConfig()  # no recipe needed, no error
    monkeypatch.setenv(recipes.FLAGS_DIR_ENV, FLAGS_DIR)
    assert config_from_argv(["train.py", "--dataset=caltech256"]).recipe.name == "caltech256_resnet18_n30"


@pytest.mark.slow
def test_script_prints_the_recipe_and_warning_then_fails_on_missing_data_writing_nothing(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--dataset=caltech256", "--arch=vgg19",
         f"--model_dir={tmp_path / 'run'}", f"--manual_dir={tmp_path / 'manual'}", f"--data_dir={tmp_path / 'tfds'}"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    recipe_line = "train.py: recipe: flags/caltech256_vgg19_n30.flags, the paper's recipe for caltech256 + vgg19"
    assert recipe_line in result.stdout
    assert "train.py: warning: the paper fine-tunes ImageNet-pretrained weights on caltech256" in result.stderr
    error = result.stderr[result.stderr.index("train.py: error:"):]  # the missing-data message (several lines)
    assert "256_ObjectCategories" in error and "--manual_dir" in error and str(tmp_path / "manual") in error, error
    assert not (tmp_path / "run").exists()


def test_a_datasets_recipe_is_its_registry_entry(monkeypatch):
    assert config_from_argv(["train.py", "--dataset=cifar100"]).recipe.name == SPECS["cifar100"].recipe
    monkeypatch.setitem(SPECS, "cifar100", dataclasses.replace(SPECS["cifar100"], recipe=None))
    resolution = config_from_argv(["train.py", "--dataset=cifar100", "--arch=resnet110"])
    assert resolution.recipe is None and resolution.config == TrainConfig(dataset="cifar100", arch="resnet110")


def test_option_roles_are_the_options_own_metadata():
    assert set(run_config.NOT_PART_OF_RUN) == {
        "overwrite", "verbose", "model_dir", "data_dir", "manual_dir", "strategy", "summary_every",
        "attention_images", "attention_images_every", "checkpoint_every",
    }
    assert run_config.NOT_FROM_RECIPE == ("weights",)
    assert run_config.BACKBONE_OPTIONS == ("arch", "arch_options", "inner_layer", "last_layer", "pixel_scale")
    assert set(run_config.METHOD_CHANGES) == {"baseline", "painless_depth"}
    roles = {f.name: f.metadata.get("check") for f in dataclasses.fields(TrainConfig)}
    assert roles["batch_size"] is run_config.POSITIVE and roles["eval_steps"] is run_config.NON_NEGATIVE


def test_help_lists_what_the_registries_hold():
    text = " ".join(run_config.grouped_help("usage").split())
    for name, spec in SPECS.items():
        assert name in text[text.index("--dataset="):text.index("--dataset_config=")], name
        own = text[text.index("the dataset's own ("):text.index("--data_dir=")]
        assert f"{spec.augmentation}: " in own and name in own.split(f"{spec.augmentation}: ")[1].split(";")[0], name
        manual = text[text.index("--manual_dir="):text.index("model:")]
        assert (name in manual) == bool(spec.manual_files or spec.config_from_manual_dir), name
    weights = text[text.index("--weights="):text.index("--painless_depth=")]
    assert all(name in weights for name in IMAGENET_BACKBONES)


def test_validation_reports_every_problem_at_once_and_the_method_ranges_from_their_one_home():
    with pytest.raises(ValueError) as caught:
        TrainConfig(batch_size=0, sigma=2, theta=-0.1, arch_options=["widht"]).validate()
    message = str(caught.value)
    for part in ("--batch_size must be positive; got 0.", "--sigma must be in (0, 1)", "got 2.",
                 "--arch_options takes key=value items; got 'widht'."):
        assert part in message, part
    assert "--theta" not in message  # the method's check stops at its first problem
    with pytest.raises(ValueError, match="^--omega must be > 0: the mask's sharpness; got -1.$"):
        TrainConfig(omega=-1).validate()
    with pytest.raises(ValueError, match="--loss_weights must be three finite non-negative numbers"):
        TrainConfig(loss_weights=["1", "-1", "1"]).validate()
    assert TrainConfig(baseline=True, loss_weights=["1", "nan", "1"]).validate().float_loss_weights() == (0, 0, 0)
    with pytest.raises(ValueError, match="--sigma must be in"):
        TrainConfig(baseline=True, sigma=1.0).validate()
