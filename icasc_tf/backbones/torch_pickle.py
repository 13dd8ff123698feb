"""Read a PyTorch state dict saved in the legacy (non-zip) format, without torch.

Such a ``.pth`` file is five pickles and raw data back to back: a magic number, the
protocol version, system info (byte order, type sizes), the state dict itself (whose
tensors refer to storages through pickle's persistent ids), the list of storage keys,
then for each key an 8-byte element count and the storage's bytes. A state dict is only
numbers, so a restricted unpickler that knows the handful of globals torch writes
(``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage`` and kin,
``collections.OrderedDict``) maps every tensor to a NumPy array; any other global is
refused, so reading a file never runs code from it.
"""

import collections
import pickle
import struct

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchFileError(ValueError):
    """The file is not a legacy PyTorch state dict this reader understands."""


class _Storage:
    """A storage named by the pickle; its bytes come after the pickles."""

    def __init__(self, dtype, size):
        self.dtype = np.dtype(dtype)
        self.size = size
        self.array = None


class _Tensor:
    """A view of a storage, materialised once the storages are read."""

    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, tuple(shape), tuple(stride)

    def to_numpy(self):
        base = self.storage.array
        if not self.shape:
            return np.array(base[self.offset])
        itemsize = base.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[self.offset:], self.shape, [s * itemsize for s in self.stride], writeable=False
        )
        return np.array(view)  # a contiguous copy, free of the storage


def _rebuild_tensor(storage, offset, shape, stride, *_unused):
    return _Tensor(storage, offset, shape, stride)


class _StorageType:
    def __init__(self, name):
        self.name = name


class _Unpickler(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file)
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchFileError(
            f"the pickle asks for {module}.{name}, which a plain state dict of tensors does not "
            "contain; this reader loads state dicts only"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise TorchFileError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, size, view = pid
        if view is not None:
            raise TorchFileError("storage views are not supported")
        if key not in self.storages:
            self.storages[key] = _Storage(_STORAGE_DTYPES[storage_type.name], size)
        return self.storages[key]


def _materialise(value):
    if isinstance(value, _Tensor):
        return value.to_numpy()
    if isinstance(value, dict):
        return collections.OrderedDict((k, _materialise(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_materialise(v) for v in value)
    return value


def load_state_dict(path):
    """``{name: np.ndarray}`` from a legacy-format ``torch.save(state_dict, path)`` file.

    Raises ``TorchFileError`` for anything else (a zip-format file from torch >= 1.6,
    a pickled module, a truncated file).
    """
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise TorchFileError(
                f"{path!r} is a zip-format torch file; this reader handles the legacy format only"
            )
        f.seek(0)
        try:
            magic = pickle.load(f)
            if magic != LEGACY_MAGIC:
                raise TorchFileError(f"{path!r} is not a legacy PyTorch file (bad magic number)")
            pickle.load(f)  # protocol version
            sys_info = pickle.load(f)
            if not sys_info.get("little_endian", True):
                raise TorchFileError(f"{path!r} was written on a big-endian machine")
            unpickler = _Unpickler(f)
            state = unpickler.load()
            keys = pickle.load(f)
            for key in keys:
                storage = unpickler.storages[key]
                (count,) = struct.unpack("<q", f.read(8))
                data = f.read(count * storage.dtype.itemsize)
                if count != storage.size or len(data) != count * storage.dtype.itemsize:
                    raise TorchFileError(f"{path!r} is truncated or corrupt (storage {key})")
                storage.array = np.frombuffer(data, storage.dtype)
        except (pickle.UnpicklingError, EOFError, struct.error, KeyError) as error:
            raise TorchFileError(f"{path!r} is truncated or not a PyTorch state dict: {error}") from error
    return _materialise(state)
