"""The image_folder dataset on trees made here: messy files, layouts, splits, errors, the pipeline."""

import contextlib
import hashlib
import io
import json
import os
import types
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from icasc_tf.data import MissingDataError, load_dataset
from icasc_tf.data import image_folder as image_folder_module
from icasc_tf.data.image_folder import (
    ImageFolder,
    forget_listings,
    held_out_count,
    make_config,
    prepare_image,
    split_class,
)
from icasc_tf.data.registry import prepare_builder
from tests.dataset_harness import check_dataset

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 40), (40, 50, 210)


def _pixels(rng, height, width, color):
    noise = rng.integers(-8, 9, size=(height, width, 3))
    return np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)


def _jpeg(path, pixels, mode="RGB", **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, format="JPEG", quality=95, **save)


def _photos(rng, folder, count, color, prefix="img"):
    for index in range(count):
        height, width = rng.integers(16, 41, size=2)
        _jpeg(folder / f"{prefix}{index:02d}.jpg", _pixels(rng, height, width, color))


def _snapshot(root):
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            digest = ""
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as file:
                    digest = hashlib.sha256(file.read()).hexdigest()
            state[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns, info.st_mode, digest)
    return state


@contextlib.contextmanager
def _captured():
    """What preparation prints: its summary (stdout) and its warnings (stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        yield types.SimpleNamespace(stderr=stderr, stdout=stdout)


def _prepare(root, data_dir, **options):
    tfds.disable_progress_bar()
    with _captured() as captured:
        builder = prepare_builder("image_folder", str(data_dir), str(root), options)
    examples = {
        split: {
            ex["image/filename"].decode(): (ex["image"], int(ex["label"]))
            for ex in builder.as_dataset(split=split).as_numpy_iterator()
        }
        for split in ("train", "test")
    }
    as_stored = builder.as_dataset(split="train+test", decoders={"image": tfds.decode.SkipDecoding()})
    return types.SimpleNamespace(
        builder=builder,
        examples=examples,
        stored={ex["image/filename"].decode(): ex["image"] for ex in as_stored.as_numpy_iterator()},
        all={**examples["train"], **examples["test"]},
        warnings=[line for line in captured.stderr.getvalue().splitlines() if line.startswith("warning: ")],
        stdout=captured.stdout.getvalue(),
    )


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """Three usable classes among every kind of file a real folder holds."""
    root = tmp_path_factory.mktemp("messy") / "My Photos"
    rng = np.random.default_rng(0)
    _photos(rng, root / "apple", 8, RED, "a")
    _jpeg(root / "apple" / "tiny.jpg", _pixels(rng, 8, 8, RED))
    buffer = io.BytesIO()
    Image.fromarray(_pixels(rng, 40, 40, RED)).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    (root / "apple" / "truncated.jpg").write_bytes(data[: len(data) * 2 // 3])  # header whole, pixels cut
    (root / "apple" / "notes.txt").write_text("shot on a sunny day")
    os.symlink(root / "apple" / "gone.jpg", root / "apple" / "broken.jpg")
    (root / "apple" / "._a00.jpg").write_bytes(b"\0\5\26\7 AppleDouble")
    (root / "apple" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    _jpeg(root / "apple" / ".ipynb_checkpoints" / "a00-checkpoint.jpg", _pixels(rng, 20, 20, RED))

    banana = root / "Banana"
    _photos(rng, banana, 4, GREEN, "b")
    _jpeg(banana / "sub" / "nested.jpg", _pixels(rng, 32, 32, GREEN))
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[:, :15] = (255, 0, 0, 255)  # opaque red
    rgba[:, 15:] = (0, 255, 0, 0)  # transparent, green hidden under it
    Image.fromarray(rgba, "RGBA").save(banana / "rgba.png")
    _jpeg(banana / "cmyk.jpg", np.full((24, 24, 3), (200, 120, 40), np.uint8), mode="CMYK")
    turned = np.zeros((20, 40, 3), np.uint8)
    turned[:, :20], turned[:, 20:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    _jpeg(banana / "rot.jpg", turned, exif=exif)
    Image.fromarray(np.full((20, 20), 32896, np.uint16)).save(banana / "gray16.png")  # 32896 / 257 = 128
    palette = Image.fromarray(np.repeat(np.array([[0] * 10 + [1] * 10], np.uint8), 20, axis=0), "P")
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.save(banana / "palette.png", transparency=1)
    y, x = np.mgrid[0:2000, 0:3000]
    gradient = np.stack([x * 255 // 2999, y * 255 // 1999, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    _jpeg(banana / "large.jpg", gradient)

    _photos(rng, root / "cherry", 6, BLUE, "c")
    with open(os.fsencode(root / "cherry") + b"/caf\xe9.jpg", "wb") as file:  # a Latin-1 name, not UTF-8
        file.write((root / "cherry" / "c00.jpg").read_bytes())
    (root / "empty").mkdir()
    (root / "empty" / ".DS_Store").write_bytes(b"\0")
    (root / "junk").mkdir()
    (root / "junk" / "readme.txt").write_text("not a picture")
    (root / "junk" / "data.csv").write_text("a,b\n1,2\n")
    _photos(rng, root / ".hidden_class", 3, RED, "h")
    (root / "__MACOSX" / "apple").mkdir(parents=True)
    (root / "__MACOSX" / "apple" / "._a00.jpg").write_bytes(b"\0\5\26\7")
    (root / "README.md").write_text("my photos")

    before = _snapshot(root)
    prepared = _prepare(root, tmp_path_factory.mktemp("messy_data"))
    return types.SimpleNamespace(root=root, before=before, **vars(prepared))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Three classes of one colour each, of 5, 8 and 13 images."""
    root = tmp_path_factory.mktemp("clean") / "colours"
    rng = np.random.default_rng(1)
    counts = {"blue": 5, "green": 8, "red": 13}
    for (name, count), color in zip(counts.items(), (BLUE, GREEN, RED)):
        _photos(rng, root / name, count, color)
    data_dir = tmp_path_factory.mktemp("clean_data")
    return types.SimpleNamespace(root=root, data_dir=data_dir, counts=counts, **vars(_prepare(root, data_dir)))


def test_class_names_are_the_sorted_folder_names_without_hidden_empty_or_unreadable_ones(messy):
    assert messy.builder.info.features["label"].names == ["Banana", "apple", "cherry"]
    assert messy.builder.builder_config.name.startswith("my_photos_")
    names = set(messy.all)
    assert not any(part.startswith(".") or part == "__MACOSX" for name in names for part in name.split("/"))
    assert {"Banana/sub/nested.jpg", "apple/tiny.jpg", "Banana/large.jpg"} <= names
    assert len(names) == 8 + 1 + 4 + 1 + 6 + 6  # apple, tiny; Banana, nested, its 6 odd files; cherry
    assert all(label == ["Banana", "apple", "cherry"].index(name.split("/")[0]) for name, (_, label) in
               messy.all.items())
    dropped = [m for m in messy.warnings if "dropped class" in m]
    assert len(dropped) == 1 and "empty" in dropped[0] and "junk" in dropped[0]
    assert messy.builder.info.metadata["dropped_classes"] == ["empty", "junk"]
    outside = [m for m in messy.warnings if "outside the class folders" in m]
    assert len(outside) == 1 and "README.md" in outside[0]


def test_unreadable_files_are_skipped_and_named_in_one_warning(messy):
    expected = {
        "apple/truncated.jpg": "truncated",
        "apple/notes.txt": "not an image",
        "apple/broken.jpg": "broken link",
        "junk/readme.txt": "not an image",
        "junk/data.csv": "not an image",
        "cherry/caf?.jpg": "not UTF-8",
    }
    skipped = dict(messy.builder.info.metadata["skipped_files"])
    assert set(skipped) == set(expected)
    assert all(reason in skipped[name] for name, reason in expected.items())
    assert "image file is truncated" in skipped["apple/truncated.jpg"]  # found decoding, not by the header
    lines = [m for m in messy.warnings if "skipped" in m]
    assert len(lines) == 1 and "skipped 6 file(s)" in lines[0]
    assert all(name in lines[0] for name in sorted(expected)[:5]) and "(1 more)" in lines[0]
    assert not set(expected) & set(messy.all)


def test_hidden_files_and_folders_are_counted_in_the_summary_and_named_in_the_metadata(messy, tmp_path):
    hidden = [".hidden_class/", "__MACOSX/", "apple/.DS_Store", "apple/._a00.jpg", "apple/.ipynb_checkpoints/",
              "empty/.DS_Store"]
    assert messy.builder.info.metadata["skipped_hidden"] == sorted(hidden)
    assert "6 hidden files and folders skipped (names starting with '.', @eaDir, __MACOSX" in messy.stdout
    # A hidden JPEG, Finder's .DS_Store and macOS's ._x.jpg beside real images, in the split layout too.
    rng = np.random.default_rng(7)
    for split in ("train", "test"):
        _photos(rng, tmp_path / "tree" / split / "cats", 2, RED)
        _photos(rng, tmp_path / "tree" / split / "dogs", 2, BLUE)
    _jpeg(tmp_path / "tree" / "train" / "cats" / ".secret.jpg", _pixels(rng, 20, 20, RED))
    (tmp_path / "tree" / "train" / "cats" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "tree" / "test" / "dogs" / "._img00.jpg").write_bytes(b"\0\5\26\7 AppleDouble")
    (tmp_path / "tree" / ".DS_Store").write_bytes(b"\0")
    prepared = _prepare(tmp_path / "tree", tmp_path / "data")
    expected = [".DS_Store", "test/dogs/._img00.jpg", "train/cats/.DS_Store", "train/cats/.secret.jpg"]
    metadata = json.loads((Path(prepared.builder.data_dir) / "metadata.json").read_text())
    assert metadata["skipped_hidden"] == expected and metadata["skipped_files"] == []
    assert "0 skipped as unreadable, 4 hidden files and folders skipped" in prepared.stdout
    assert sorted(prepared.all) == [f"{split}/{name}/img{i:02d}.jpg" for split in ("test", "train")
                                    for name in ("cats", "dogs") for i in range(2)]
    assert not any("hidden" in line or ".secret" in line for line in prepared.warnings)


def test_transparency_is_white_and_cmyk_16bit_and_palette_colours_are_right(messy):
    rgba = messy.all["Banana/rgba.png"][0].astype(int)
    assert rgba.shape == (20, 30, 3)
    np.testing.assert_allclose(rgba[10, 4], (255, 0, 0), atol=12)
    np.testing.assert_allclose(rgba[10, 25], (255, 255, 255), atol=12)  # not the hidden green
    np.testing.assert_allclose(messy.all["Banana/cmyk.jpg"][0][12, 12].astype(int), (200, 120, 40), atol=8)
    with Image.open(io.BytesIO(messy.stored["Banana/cmyk.jpg"])) as stored:
        assert (stored.format, stored.mode) == ("JPEG", "RGB")  # TensorFlow reads CMYK; other decoders may not
    assert messy.stored["apple/a00.jpg"] == (messy.root / "apple" / "a00.jpg").read_bytes()  # JPEGs kept as they are
    np.testing.assert_allclose(messy.all["Banana/gray16.png"][0][10, 10].astype(int), (128, 128, 128), atol=3)
    palette = messy.all["Banana/palette.png"][0].astype(int)
    np.testing.assert_allclose(palette[10, 3], (255, 0, 0), atol=12)
    np.testing.assert_allclose(palette[10, 16], (255, 255, 255), atol=12)


def test_exif_rotation_is_applied_large_images_downscaled_small_ones_kept(messy):
    turned = messy.all["Banana/rot.jpg"][0].astype(int)
    assert turned.shape == (40, 20, 3)  # stored 40 wide, 20 high; shown turned upright
    np.testing.assert_allclose(turned[5, 10], RED, atol=12)  # the left half is now on top
    np.testing.assert_allclose(turned[35, 10], BLUE, atol=12)
    large = messy.all["Banana/large.jpg"][0].astype(int)
    assert large.shape == (683, 1024, 3)
    np.testing.assert_allclose(large[341, 512], (127, 127, 128), atol=6)
    assert messy.all["apple/tiny.jpg"][0].shape == (8, 8, 3)
    small = sum(min(image.shape[:2]) < 32 for image, _ in messy.all.values())
    assert f"{small} smaller than 32 px" in messy.stdout and "1 downscaled to 1024 px" in messy.stdout
    assert "1 turned upright" in messy.stdout


def test_nothing_in_the_folder_is_changed(messy):
    assert _snapshot(messy.root) == messy.before


def test_the_split_is_stratified_by_class_seeded_and_deterministic(clean, tmp_path):
    names = clean.builder.info.features["label"].names
    assert names == ["blue", "green", "red"]
    for label, (name, count) in enumerate(clean.counts.items()):
        test = [f for f, (_, y) in clean.examples["test"].items() if y == label]
        train = [f for f, (_, y) in clean.examples["train"].items() if y == label]
        assert len(test) == held_out_count(count, 0.2) == round(0.2 * count)  # 1, 2, 3 (2.6 rounds to 3)
        assert len(train) + len(test) == count and not set(train) & set(test)
        files = sorted(f"{name}/{f}" for f in os.listdir(clean.root / name))
        assert sorted(test) == split_class(files, 0.2, data_seed=0)[1]
        assert split_class(list(reversed(files)), 0.2, data_seed=0) == split_class(files, 0.2, data_seed=0)
    other = _prepare(clean.root, clean.data_dir, data_seed=1)
    assert other.builder.builder_config.name != clean.builder.builder_config.name
    assert set(other.examples["test"]) != set(clean.examples["test"])
    assert {len(other.examples[s]) for s in ("train", "test")} == {len(clean.examples[s]) for s in ("train", "test")}
    assert held_out_count(1, 0.2) == 0 and held_out_count(2, 0.9) == 1 and held_out_count(5, 0.5) == 3


def test_load_dataset_yields_every_training_image_once_with_its_label(clean):
    dataset, info = load_dataset(
        "image_folder", "train", 8, data_dir=str(clean.data_dir), manual_dir=str(clean.root), training=True,
        drop_remainder=False,
    )
    assert info.class_names == ("blue", "green", "red") and info.num_classes == 3
    assert info.num_examples == len(clean.examples["train"]) == 4 + 6 + 10
    labels = []
    for images, batch_labels in dataset:
        assert images.shape[1:] == (224, 224, 3) and images.dtype == "float32"
        assert 0.0 <= float(np.min(images)) and float(np.max(images)) <= 1.0
        colour = np.argmax(np.mean(images.numpy(), axis=(1, 2)), axis=-1)  # 0 red, 1 green, 2 blue
        np.testing.assert_array_equal(batch_labels.numpy(), np.array([2, 1, 0])[colour])
        labels += batch_labels.numpy().tolist()
    assert np.bincount(labels).tolist() == [4, 6, 10]
    test, test_info = load_dataset("image_folder", "test", 8, data_dir=str(clean.data_dir),
                                   manual_dir=str(clean.root))
    assert test_info.num_examples == 6 and next(iter(test))[0].shape == (6, 224, 224, 3)


def test_the_dataset_harness_holds(clean):
    passes = check_dataset("image_folder", 4, data_dir=str(clean.data_dir), manual_dir=str(clean.root), image_size=32)
    assert (passes.train_info.num_examples, passes.test_info.num_examples) == (20, 6)


def test_an_unchanged_folder_is_reused_and_a_changed_one_prepared_again(tmp_path):
    rng = np.random.default_rng(2)
    for name, color in (("cats", RED), ("dogs", BLUE)):
        _photos(rng, tmp_path / "pets" / name, 5, color)
    first = _prepare(tmp_path / "pets", tmp_path / "data")
    name = first.builder.builder_config.name
    forget_listings()
    again = _prepare(tmp_path / "pets", tmp_path / "data")
    assert again.builder.builder_config.name == name and "Prepared" not in again.stdout
    _photos(rng, tmp_path / "pets" / "cats", 6, RED)  # one more image; the others rewritten alike
    assert make_config(str(tmp_path / "pets")).name == name  # listed once per process
    forget_listings()
    changed = _prepare(tmp_path / "pets", tmp_path / "data")
    assert changed.builder.builder_config.name != name and "Prepared" in changed.stdout
    assert len(changed.all) == 11


def test_train_and_test_folders_are_the_splits_and_a_class_missing_from_test_is_named(tmp_path):
    rng = np.random.default_rng(3)
    for split, count in (("train", 3), ("test", 2)):
        for name, color in (("a", RED), ("b", GREEN), ("c", BLUE)):
            if not (split == "test" and name == "c"):
                _photos(rng, tmp_path / "tree" / split / name, count, color)
    (tmp_path / "tree" / "test" / "c").mkdir()  # there, but empty
    _photos(rng, tmp_path / "tree" / "val" / "a", 1, RED)  # test/ is preferred: val/ is not read
    prepared = _prepare(tmp_path / "tree", tmp_path / "data", test_share=0.5)
    assert (len(prepared.examples["train"]), len(prepared.examples["test"])) == (9, 4)
    assert all(name.startswith("train/") for name in prepared.examples["train"])
    assert {y for _, y in prepared.examples["test"].values()} == {0, 1}
    warned = [m for m in prepared.warnings if "without test images" in m]
    assert len(warned) == 1 and warned[0].endswith(": c")
    assert any("val/" in m for m in prepared.warnings if "outside the class folders" in m)


def test_a_class_only_in_test_is_an_error_naming_it_and_both_folders(tmp_path):
    rng = np.random.default_rng(4)
    for split, names in (("train", ("a", "b")), ("test", ("a", "b", "zebra"))):
        for name in names:
            _photos(rng, tmp_path / "tree" / split / name, 2, RED)
    with pytest.raises(MissingDataError) as error:
        load_dataset("image_folder", "train", 4, data_dir=str(tmp_path / "data"), manual_dir=str(tmp_path / "tree"))
    message = str(error.value)
    assert "zebra" in message and str(tmp_path / "tree" / "test") in message
    assert str(tmp_path / "tree" / "train") in message and "never saw" in message
    assert not (tmp_path / "data").exists()


def _layout_message_checks(message):
    for needed in ("--manual_dir", "PATH/<class>/*.jpg", "PATH/train/<class>/*", "PATH/test/<class>/*"):
        assert needed in message


@pytest.mark.parametrize(
    "case", ["none", "missing", "file", "no_classes", "splits_without_classes", "train_without_test", "one_class",
             "one_readable_class"],
)
def test_a_wrong_folder_is_one_error_naming_the_flag_and_the_layout(tmp_path, case):
    rng = np.random.default_rng(5)
    folder = tmp_path / "tree"
    if case == "file":
        folder.write_text("not a folder")
    elif case == "no_classes":
        _photos(rng, folder, 3, RED)  # images, but no class subfolders
    elif case == "splits_without_classes":  # train/ and test/ are not taken for two classes
        _photos(rng, folder / "train", 2, RED)
        _photos(rng, folder / "test", 2, RED)
    elif case == "train_without_test":  # a train/ alone is not one class called "train"
        _photos(rng, folder / "train" / "cats", 2, RED)
        _photos(rng, folder / "train" / "dogs", 2, GREEN)
    elif case == "one_class":
        _photos(rng, folder / "only", 3, RED)
        (folder / "empty").mkdir()
    elif case == "one_readable_class":
        _photos(rng, folder / "only", 3, RED)
        (folder / "texts").mkdir()
        (folder / "texts" / "a.jpg").write_text("not an image")
    manual_dir = None if case == "none" else str(folder)
    with pytest.raises(MissingDataError) as error:
        load_dataset("image_folder", "train", 4, data_dir=str(tmp_path / "data"), manual_dir=manual_dir)
    message = str(error.value)
    _layout_message_checks(message)
    expected = {
        "none": "no folder given",
        "missing": "does not exist",
        "file": "is a file, not a folder",
        "no_classes": "has no class subfolders (it holds 3 files directly",
        "splits_without_classes": f"{folder / 'train'} has no class subfolders (it holds 2 files directly",
        "train_without_test": "has train/ but no test/ or val/ or valid/ or validation/ or testing/ beside it",
        "one_class": "1 class folder(s) with files (only)",
        "one_readable_class": "1 class folder(s) with readable images (only)",
    }[case]
    assert expected in message
    assert not list((tmp_path / "data").glob("image_folder/*/*/*.tfrecord*"))


def test_classes_too_small_for_a_test_image_are_an_error(tmp_path):
    rng = np.random.default_rng(6)
    for name in ("a", "b"):
        _photos(rng, tmp_path / "tree" / name, 2, RED)
    with pytest.raises(MissingDataError, match="rounds to 0 images"):
        _prepare(tmp_path / "tree", tmp_path / "data")


def test_options_are_checked_and_the_builder_name_is_ours():
    with pytest.raises(ValueError, match="valid options"):
        make_config("/nowhere", test_fraction=0.3)
    with pytest.raises(ValueError, match="test_share"):
        make_config("/nowhere", test_share=1.0)
    assert tfds.builder_cls("image_folder") is ImageFolder  # TFDS's own ImageFolder is not registered


def test_pixel_limits_refuse_huge_non_jpegs_and_downscale_huge_jpegs(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # as if every image were a decompression bomb
    monkeypatch.setattr(image_folder_module, "PIXEL_LIMIT", 2000)
    gradient = np.tile(np.arange(120, dtype=np.uint8)[None, :, None], (90, 1, 3))
    buffer = io.BytesIO()
    Image.fromarray(gradient).save(buffer, format="JPEG")
    prepared = prepare_image(buffer.getvalue(), max_side=60)
    assert prepared.size == (60, 45) and prepared.changes == ("downscaled",)
    buffer = io.BytesIO()
    Image.fromarray(gradient).save(buffer, format="PNG")
    with pytest.raises(image_folder_module.UnusableImage, match="too large"):
        prepare_image(buffer.getvalue(), max_side=60)
    assert Image.MAX_IMAGE_PIXELS == 1000  # PIL's own setting is restored


@pytest.mark.slow
def test_the_command_line_trains_evaluates_and_draws_a_users_folder(tmp_path):
    """scripts/train.py --dataset=image_folder --manual_dir=PATH, then evaluate.py and visualize.py on
    the run, as on any other: class names from the folders, a broken file skipped and named."""
    import json
    import subprocess
    import sys

    from tests.script_output import our_lines

    rng = np.random.default_rng(3)
    tree = tmp_path / "my photos"
    for name, color in (("cats", RED), ("dogs", GREEN), ("fish", BLUE)):
        _photos(rng, tree / name, 12, color)
    (tree / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = tmp_path / "run"

    def script(name, *args):
        return subprocess.run(
            [sys.executable, os.path.join(root, "scripts", name), *args],
            capture_output=True, text=True, cwd=root, timeout=600,
        )

    trained = script(
        "train.py", "--dataset=image_folder", f"--manual_dir={tree}", "--arch=resnet8", "--image_size=32",
        "--epochs=1", "--batch_size=8", "--attention_images=2", f"--model_dir={run}",
        f"--data_dir={tmp_path / 'tfds'}", "--verbose=2",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "broken.jpg" in trained.stderr + trained.stdout  # skipped and named once
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"]["class_names"] == ["cats", "dogs", "fish"]
    evaluated = script("evaluate.py", f"--model_dir={run}")
    assert evaluated.returncode == 0, our_lines(evaluated.stderr)[-5:]
    results = json.loads((run / "eval_test.json").read_text())
    assert results["split"] == "test" and results["examples"] == metrics["dataset"]["test_examples"] > 0
    drawn = script("visualize.py", f"--model_dir={run}", "--num_images=2")
    assert drawn.returncode == 0, our_lines(drawn.stderr)[-5:]
    assert glob_one(run, "top5_test_ach_last.png")


def glob_one(folder, name):
    return (folder / name).is_file()


def test_a_training_and_valid_tree_is_read_as_its_two_splits(tmp_path):
    rng = np.random.default_rng(4)
    for split, count in (("training", 3), ("valid", 2)):
        for name, color in (("a", RED), ("b", GREEN)):
            _photos(rng, tmp_path / "tree" / split / name, count, color)
    prepared = _prepare(tmp_path / "tree", tmp_path / "data")
    assert prepared.builder.info.features["label"].names == ["a", "b"]  # not "training" and "valid"
    assert (len(prepared.examples["train"]), len(prepared.examples["test"])) == (6, 4)
