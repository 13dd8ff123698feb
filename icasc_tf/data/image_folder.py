"""The user's own images, one subfolder per class, as a TFDS dataset (`--dataset=image_folder --manual_dir=PATH`).

Layouts: PATH/train/<class>/* with PATH/test/<class>/* (or PATH/val/, PATH/validation/ when
there is no test/) are the two splits; otherwise PATH/<class>/* is split per class into train
and test: the `test_share` of each class's images (rounded half up, at most all but one image)
whose hash of (`data_seed`, file name) ranks lowest go to test. Class names are the sorted
names of the training class folders; folders below a class folder belong to that class.

Every file is checked and fixed once, at preparation, so that training never meets a file it
cannot decode: a JPEG that PIL and TensorFlow both decode, RGB or grey, without EXIF rotation
and not larger than `max_side`, is stored byte for byte; anything else PIL reads is turned upright
(EXIF orientation), made RGB (transparency over white; palette, grey, 16-bit, CMYK converted),
downscaled to `max_side` and stored as a quality-95 JPEG. Files PIL cannot read (not images,
truncated, unreadable, broken links) are skipped and named in one warning and in the
metadata; hidden files and folders ('.*' such as .DS_Store and macOS's ._x.jpg, __MACOSX, @eaDir,
Thumbs.db, desktop.ini) are not read: the summary line counts them and the metadata names them
(`skipped_hidden`); nothing in PATH is written.

Why not `tfds.folder_dataset.ImageFolder` or `keras.utils.image_dataset_from_directory`: both
decode the files while training, so one truncated JPEG or a text file named .jpg raises
InvalidArgumentError and ends the epoch (measured: after 1 and 5 of 10 files); both drop the
alpha channel (what transparent pixels hide shows), ignore EXIF orientation and read macOS's
`._x.jpg` files as images. (TensorFlow does decode CMYK JPEGs right.)

The folder's listing (paths, sizes, modification times) and the options name the builder
config, so a changed folder is prepared again and an unchanged one is reused from `data_dir`.
The listing is taken once per process and folder (`forget_listings()` takes it anew), so that
a training run keeps the dataset it started with when the folder changes under it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import stat
import sys
import unicodedata
import warnings

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image, ImageFile, ImageOps

from icasc_tf.data.errors import MissingDataError

INSTRUCTIONS = """\
image_folder reads a folder of your images, given as `--manual_dir=PATH` (Python: `manual_dir=PATH`), laid out as
  PATH/<class>/*.jpg                          (split into train and test per class: option test_share, data_seed)
or
  PATH/train/<class>/*  and  PATH/test/<class>/*   (the two splits as they are; val/ or validation/ for test/).
Class names are the folder names; any image format PIL reads is accepted.
"""
TEST_FOLDERS = ("test", "val", "valid", "validation", "testing")
TRAIN_FOLDERS = ("train", "training")
IGNORED_NAMES = frozenset({"__MACOSX", "@eaDir", "Thumbs.db", "desktop.ini"})  # hidden, as '.*' names are
MAX_SIDE = 1024  # the squash augmentation at 448 resizes to 512: a 2:1 image keeps 512 on its short side
SMALL_SIDE = 32  # images with a shorter side are counted in the summary (the pipeline upsamples them)
JPEG_QUALITY = 95
SHOWN = 5  # names shown in one warning line
# PIL refuses to open images of more than twice its MAX_IMAGE_PIXELS (decompression bombs). JPEGs
# of any size are read at 1/2 to 1/8 scale (libjpeg's DCT scaling), so only other formats are
# refused, and only above this many pixels (about 180 million: 0.7 GB decoded).
PIXEL_LIMIT = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 178_956_970
_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a camera's JPEG with extra frames; TensorFlow reads the first


def _warn(message, *args):
    """What preparation left out, told once on stderr (a run's absl logging may hide warnings)."""
    print(f"warning: {message % args}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Listing:
    """What `scan` found under the folder: the files of each class of each source folder.

    `sources` maps "all" (one tree to split) or "train" and "test" to {class: [(relative path,
    size, mtime_ns)]}, paths relative to `root` with '/'; `unusable` holds (path, reason) of
    entries that are not regular readable files (broken links, fifos); `hidden` the hidden files
    and folders (folders end in '/') at the top, in the split folders and in the class folders.
    """

    root: str
    layout: str  # "classes" or "splits"
    folders: dict[str, str]  # source -> its folder relative to root ("" for "all")
    sources: dict[str, dict[str, list[tuple[str, int, int]]]]
    unusable: list[tuple[str, str]]
    ignored: list[str]  # top-level entries that are not read
    hidden: list[str]  # not read either, and not part of the listing's digest (Finder adds .DS_Store)


@dataclasses.dataclass(frozen=True)
class Options:
    """The options of a folder's preparation (`--dataset_config`), their types and defaults."""

    test_share: float = 0.2  # of each class's images held out for test (one tree to split)
    data_seed: int = 0  # seed of that draw
    max_side: int = MAX_SIDE  # larger images are downscaled to this longer side when stored


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
    """A folder (absolute path) and the options of its preparation; named after its listing."""

    folder: str = ""
    options: Options = Options()
    listing: Listing | None = dataclasses.field(default=None, repr=False)


HIDDEN_RULE = "names starting with '.', " + ", ".join(sorted(IGNORED_NAMES, key=str.lower))


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_NAMES


def _missing(message: str) -> MissingDataError:
    return MissingDataError(f"image_folder: {message}\n{INSTRUCTIONS}")


def _subfolders(path: str) -> list[str]:
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if not _hidden(e.name) and e.is_dir())


def _relative(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _hidden_entries(root: str, relative: str) -> list[str]:
    """The hidden files and folders (with '/') directly in root/relative, relative to root."""
    with os.scandir(os.path.join(root, relative)) as entries:
        return sorted(_relative(e.path, root) + ("/" if e.is_dir() else "") for e in entries if _hidden(e.name))


def _class_files(root: str, relative: str):
    """(entries, unusable, hidden) of the files under root/relative; hidden files and folders are not entered."""
    entries, unusable, hidden, seen = [], [], [], set()
    for folder, dirs, files in os.walk(os.path.join(root, relative), followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link loop
            dirs[:] = []
            continue
        seen.add(real)
        hidden += [_relative(os.path.join(folder, d), root) + "/" for d in sorted(dirs) if _hidden(d)]
        hidden += [_relative(os.path.join(folder, f), root) for f in sorted(files) if _hidden(f)]
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for name in sorted(files):
            if _hidden(name):
                continue
            path = os.path.join(folder, name)
            rel = _relative(path, root)
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:  # bytes that are not UTF-8 in a Linux file name
                unusable.append((rel.encode("utf-8", "replace").decode(), "file name not UTF-8: rename it"))
                continue
            try:
                info = os.stat(path)
            except OSError as error:
                reason = "broken link" if os.path.islink(path) else f"unreadable ({error.strerror})"
                unusable.append((rel, reason))
                continue
            if not stat.S_ISREG(info.st_mode):
                unusable.append((rel, "not a regular file"))
                continue
            entries.append((rel, info.st_size, info.st_mtime_ns))
    return entries, unusable, hidden


def _scan_classes(root: str, relative: str, listing_unusable: list, listing_hidden: list) -> dict[str, list]:
    classes = {}
    for name in _subfolders(os.path.join(root, relative)):
        entries, unusable, hidden = _class_files(root, os.path.join(relative, name) if relative else name)
        classes[name] = entries
        listing_unusable += unusable
        listing_hidden += hidden
    return classes


def _loose_files(folder: str) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not _hidden(e.name) and not e.is_dir())


def scan(manual_dir: str | None) -> Listing:
    """Lists the folder (names and stat only, no file is opened) or says what is wrong with it."""
    if not manual_dir:
        raise _missing("no folder given.")
    root = os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
    if not os.path.exists(root):
        raise _missing(f"{root} does not exist.")
    if not os.path.isdir(root):
        raise _missing(f"{root} is a file, not a folder.")
    top = _subfolders(root)
    test_name = next((name for name in TEST_FOLDERS if name in top), None)
    train_name = next((name for name in TRAIN_FOLDERS if name in top), None)
    unusable: list[tuple[str, str]] = []
    hidden = _hidden_entries(root, "")
    if bool(train_name) != bool(test_name):
        given, missing = (train_name, TEST_FOLDERS) if train_name else (test_name, TRAIN_FOLDERS)
        raise _missing(
            f"{root} has {given}/ but no {'/ or '.join(missing)}/ beside it: a split layout needs both (a "
            f"{given}/ alone would be read as one class). Add the other folder, or put the class folders "
            f"directly in {root} for a seeded held-out test share."
        )
    if train_name and test_name:
        layout, folders = "splits", {"train": train_name, "test": test_name}
        hidden += [entry for folder in folders.values() for entry in _hidden_entries(root, folder)]
        sources = {split: _scan_classes(root, folder, unusable, hidden) for split, folder in folders.items()}
        ignored = [name + "/" for name in top if name not in folders.values()]
    else:
        layout, folders = "classes", {"all": ""}
        sources = {"all": _scan_classes(root, "", unusable, hidden)}
        ignored = []
    ignored += _loose_files(root)
    train = sources["train" if layout == "splits" else "all"]
    where = os.path.join(root, folders.get("train", ""))
    if not train:
        loose = len(_loose_files(where))
        held = f" (it holds {loose} files directly: put them in class subfolders)" if loose else ""
        raise _missing(f"{where} has no class subfolders{held}.")
    with_files = [name for name, files in train.items() if files]
    if len(with_files) < 2:
        raise _missing(
            f"{where} has {len(with_files)} class folder(s) with files ({', '.join(with_files) or 'none'}); "
            "a classifier needs at least 2."
        )
    if layout == "splits":
        _check_test_classes(root, folders, set(with_files), sources["test"])
    return Listing(root, layout, folders, sources, unusable, ignored, sorted(hidden))


def _check_test_classes(root, folders, train_classes, test_sources):
    unseen = sorted(name for name, files in test_sources.items() if files and name not in train_classes)
    if unseen:
        raise _missing(
            f"class(es) {', '.join(unseen)} have images in {os.path.join(root, folders['test'])} but none in "
            f"{os.path.join(root, folders['train'])}: a model cannot predict a class it never saw. Add training "
            "images of them or remove them from the test folder."
        )


def _slug(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_")[:32] or "folder"


_CONFIGS: dict[tuple, ImageFolderConfig] = {}


def forget_listings() -> None:
    """Makes the next `make_config` list its folder anew (a process otherwise lists it once)."""
    _CONFIGS.clear()


def _options(options: dict) -> Options:
    """The given options over the defaults, checked and of their declared types."""
    defaults = Options()
    names = [field.name for field in dataclasses.fields(Options)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"Unknown image_folder option(s) {unknown}; valid options: {names}.")
    values = {**dataclasses.asdict(defaults), **options}
    if not 0 < values["test_share"] < 1:
        raise ValueError(f"image_folder: test_share must be in (0, 1), got {values['test_share']}.")
    if int(values["max_side"]) < SMALL_SIDE:
        raise ValueError(f"image_folder: max_side must be >= {SMALL_SIDE}, got {values['max_side']}.")
    return Options(**{name: type(getattr(defaults, name))(value) for name, value in values.items()})


def make_config(manual_dir: str | None = None, **options) -> ImageFolderConfig:
    """The config of a folder: named `<folder name>_<digest of path, listing and options>`."""
    wanted = _options(options)
    values = dataclasses.asdict(wanted)
    key = (manual_dir and os.path.abspath(os.path.expanduser(os.fspath(manual_dir))), *values.values())
    if key in _CONFIGS:
        return _CONFIGS[key]
    listing = scan(manual_dir)
    digest = hashlib.sha256(
        json.dumps([listing.root, listing.layout, listing.sources, listing.unusable, values]).encode()
    ).hexdigest()[:10]
    files = sum(len(f) for classes in listing.sources.values() for f in classes.values())
    config = ImageFolderConfig(
        name=f"{_slug(os.path.basename(listing.root))}_{digest}",
        description=f"{listing.root} ({listing.layout} layout, {files} files); options {values}",
        folder=listing.root,
        options=wanted,
        listing=listing,
    )
    _CONFIGS[key] = config
    return config


def held_out_count(num_images: int, share: float) -> int:
    """Images of a class that go to test: share * n rounded half up, leaving train at least one."""
    return max(0, min(math.floor(share * num_images + 0.5), num_images - 1))


def split_class(files: list[str], share: float, data_seed: int) -> tuple[list[str], list[str]]:
    """(train, test) of one class's files: test holds those whose (seed, name) hash ranks lowest.

    A file's side depends on its name, the seed and the class's size only, not on the order of
    the listing or on other classes; adding an image moves at most one other.
    """

    def rank(path: str):
        name = path.split("/", 1)[1] if "/" in path else path
        return hashlib.sha256(f"{data_seed}/{name}".encode()).hexdigest(), path

    ordered = sorted(files, key=rank)
    count = held_out_count(len(files), share)
    return sorted(ordered[count:]), sorted(ordered[:count])


class UnusableImage(Exception):
    """A file that is an image but cannot be stored (too many pixels for a non-JPEG)."""


@contextlib.contextmanager
def _pil_settings():
    """PIL as preparation needs it: no pixel limit (checked here), truncated files fail, no warnings."""
    limit, truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = None, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = limit, truncated


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1) or 1)
    except Exception:  # a damaged EXIF block: the pixels are still good
        return 1


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels of any PIL mode: transparency composited over white, 16-bit scaled to 8."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit grey: scale 0..65535 to 0..255
        pixels = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or pixels.max(initial=0) > 255:
            pixels = pixels / 257.0
        elif image.mode == "F" and pixels.max(initial=0) <= 1.0:
            pixels = pixels * 255.0
        return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")  # L, P, 1, CMYK, YCbCr, LAB, HSV


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    data: bytes  # JPEG bytes that TensorFlow decodes to RGB
    size: tuple[int, int]  # (width, height) as stored
    changes: tuple[str, ...]  # of "rotated", "converted", "downscaled"; () when stored as it was


def _tf_decodes(data: bytes) -> bool:
    """Whether the decoder of the training pipeline (TFDS's, tf.image.decode_image) reads the bytes."""
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.OpError:
        return False
    return True


def prepare_image(data: bytes, max_side: int = MAX_SIDE) -> PreparedImage:
    """The image in `data` as it is stored; raises if PIL cannot decode all of it."""
    with _pil_settings():
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        is_jpeg = image.format in _JPEG_FORMATS
        scale = max_side / max(width, height)
        if scale < 1 and is_jpeg:  # decode at the smallest DCT scale not below the target
            image.draft(None, (max(1, int(width * scale)), max(1, int(height * scale))))
        elif width * height > PIXEL_LIMIT:
            raise UnusableImage(f"too large to decode ({width}x{height} {image.format}); downscale it first")
        image.load()
        orientation = _orientation(image)
        as_is = is_jpeg and image.mode in ("RGB", "L") and orientation == 1 and scale >= 1
        if as_is and _tf_decodes(data):
            return PreparedImage(data, (width, height), ())
        changes = []
        if orientation != 1:
            try:
                image = ImageOps.exif_transpose(image)
                changes.append("rotated")
            except Exception:  # a damaged EXIF block: keep the pixels as stored
                pass
        if image.mode != "RGB" or not is_jpeg or as_is:  # as_is here: a JPEG TensorFlow cannot read
            changes.append("converted")
        image = to_rgb(image)
        if scale < 1:
            w, h = image.size
            factor = max_side / max(w, h)
            image = image.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.LANCZOS)
            changes.append("downscaled")
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        return PreparedImage(buffer.getvalue(), image.size, tuple(changes))


def probe(path: str) -> str | None:
    """Why PIL cannot open the file (header only, no decoding), or None when it can."""
    try:
        file = open(path, "rb")
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    with file:
        try:
            with _pil_settings(), Image.open(file):
                return None
        except Image.UnidentifiedImageError:
            return "not an image"
        except Exception as error:  # PIL raises many kinds on a damaged header
            return f"truncated or damaged ({error})"


def _names(items, shown: int = SHOWN) -> str:
    items = list(items)
    more = f", ... ({len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


class ImageFolder(tfds.core.GeneratorBasedBuilder):
    """TFDS builder `image_folder` over a class-per-subfolder tree; its config comes from `make_config`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(),  # names set from the folders at preparation
                    "image/filename": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _log_download_bytes(self) -> None:
        config = self.builder_config
        print(f"Preparing image_folder/{config.name} from {config.folder} into {self.data_dir}, once.", flush=True)

    def _log_download_done(self) -> None:
        pass  # the summary of _download_and_prepare says it

    def _split_generators(self, dl_manager):
        del dl_manager  # the folder is the config's
        config = self.builder_config
        listing = config.listing or scan(config.folder)
        self._skipped = list(listing.unusable)
        self._stats = {"rotated": 0, "converted": 0, "downscaled": 0, "small": 0}
        usable = {}
        for source, classes in listing.sources.items():
            usable[source] = {}
            for name, entries in classes.items():
                files = []
                for rel, _, _ in entries:
                    reason = probe(os.path.join(listing.root, rel))
                    if reason:
                        self._skipped.append((rel, reason))
                    else:
                        files.append(rel)
                usable[source][name] = files
        train_source = "train" if listing.layout == "splits" else "all"
        dropped = sorted(name for name, files in usable[train_source].items() if not files)
        names = sorted(name for name, files in usable[train_source].items() if files)
        where = os.path.join(listing.root, listing.folders.get("train", ""))
        if dropped:
            _warn("image_folder: dropped class folder(s) of %s without a readable image: %s", where,
                         _names(dropped))
        if len(names) < 2:
            raise _missing(
                f"{where} has {len(names)} class folder(s) with readable images ({', '.join(names) or 'none'}); "
                f"a classifier needs at least 2. Unreadable files: {_names(f'{p} ({r})' for p, r in self._skipped)}."
            )
        if listing.layout == "splits":
            _check_test_classes(listing.root, listing.folders, set(names), usable["test"])
            pairs = {split: [(f, names.index(c)) for c in names for f in usable[split].get(c, [])]
                     for split in ("train", "test")}
        else:
            pairs = {"train": [], "test": []}
            for label, name in enumerate(names):
                train, test = split_class(usable["all"][name], config.options.test_share, config.options.data_seed)
                pairs["train"] += [(f, label) for f in train]
                pairs["test"] += [(f, label) for f in test]
        if not pairs["test"]:
            raise _missing(
                f"no test images in {listing.root}: "
                + (f"{os.path.join(listing.root, listing.folders['test'])} holds no readable image of the "
                   "training classes." if listing.layout == "splits" else
                   f"test_share={config.options.test_share} of each class rounds to 0 images (classes of "
                   f"{max(len(files) for files in usable['all'].values())} or fewer). Add images or raise test_share.")
            )
        tested = {label for _, label in pairs["test"]}
        without_test = [name for label, name in enumerate(names) if label not in tested]
        if without_test:
            _warn("image_folder: class(es) without test images (they are trained on, never tested): %s",
                         _names(without_test, 20))
        if listing.ignored:
            _warn("image_folder: not read, being outside the class folders of %s: %s", listing.root,
                         _names(listing.ignored))
        self.info.features["label"].names = names
        self._hidden = listing.hidden
        self.info.metadata.update(
            folder=listing.root, layout=listing.layout, dropped_classes=dropped,
            classes_without_test_images=without_test, ignored=listing.ignored, skipped_hidden=listing.hidden,
        )
        return {split: self._generate_examples(split_pairs, listing.root) for split, split_pairs in pairs.items()}

    def _generate_examples(self, pairs, root):
        max_side = self.builder_config.options.max_side
        for rel, label in pairs:
            try:
                with open(os.path.join(root, rel), "rb") as file:
                    data = file.read()
            except OSError as error:
                self._skipped.append((rel, f"unreadable ({error.strerror or error})"))
                continue
            try:
                image = prepare_image(data, max_side)
            except UnusableImage as error:
                self._skipped.append((rel, str(error)))
                continue
            except Exception as error:  # PIL: "image file is truncated", "broken data stream", ...
                self._skipped.append((rel, f"truncated or damaged ({error})"))
                continue
            for change in image.changes:
                self._stats[change] += 1
            self._stats["small"] += min(image.size) < SMALL_SIDE
            yield rel, {"image": image.data, "label": label, "image/filename": rel}

    def _download_and_prepare(self, dl_manager, download_config):
        try:
            super()._download_and_prepare(dl_manager, download_config)
        except AssertionError as error:  # TFDS's writer refuses a split without examples
            if "No examples were yielded" not in str(error):
                raise
            raise _missing(
                f"{error} None of its files in {self.builder_config.folder} could be decoded: "
                f"{_names(f'{p} ({r})' for p, r in sorted(self._skipped))}."
            ) from error
        config, splits = self.builder_config, self.info.splits
        skipped = sorted(self._skipped)
        self.info.metadata.update(skipped_files=[list(item) for item in skipped], **self._stats)
        if skipped:
            _warn(
                "image_folder: skipped %d file(s) of %s that are not readable images: %s (all in metadata.json "
                "of image_folder/%s).", len(skipped), config.folder, _names(f"{p} ({r})" for p, r in skipped),
                config.name,
            )
        stats = self._stats
        print(
            f"Prepared image_folder/{config.name}: {splits['train'].num_examples} train and "
            f"{splits['test'].num_examples} test images of {self.info.features['label'].num_classes} classes; "
            f"{stats['converted']} converted to RGB JPEG, {stats['rotated']} turned upright, {stats['downscaled']} "
            f"downscaled to {config.options.max_side} px, {stats['small']} smaller than {SMALL_SIDE} px (kept), "
            f"{len(skipped)} skipped as unreadable, {len(self._hidden)} hidden files and folders skipped "
            f"({HIDDEN_RULE}). Later runs reuse it while the folder is unchanged.",
            flush=True,
        )
