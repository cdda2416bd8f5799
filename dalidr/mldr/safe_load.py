"""Reading the paper's downloaded reinforcement files without ever running their code.

The published reinforcements (apple/ml-dr) are pickles: `torch.save` zip archives (pickle
protocol 4), possibly gzip-compressed, or joblib dumps (zlib-compressed pickles). A pickle can
name any importable callable and call it, so a planted file could run code at load time. The
paper's loader unpickles them with full trust; this module never does.

`torch.load(weights_only=True)` is torch's own restricted unpickler, but it cannot hold these
files: it rejects pickle protocol 4's FRAME opcode, which `reinforce.py` writes. So the files
go through `RestrictedUnpickler`, which resolves a global only from a short allow-list: the
plain containers need no globals at all; numpy scalars of numeric dtypes (CutMix boxes are
`np.clip` results), numeric numpy arrays, `OrderedDict`, and torch tensors rebuilt by this
module's own code from the archive's raw storage bytes. Anything else (`os.system`,
`builtins.eval`, any class) is refused with the file's name, before anything is constructed.
Trade-off: an allow-list is conservative by design; a file using another type is refused
rather than guessed at, and the error says which global it asked for.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dalidr.errors import DatasetError

__all__ = ["RestrictedUnpickler", "load_file", "load_bytes", "MAX_DECOMPRESSED"]

# Largest payload a compressed file may expand to (a sample file is tens of kilobytes).
MAX_DECOMPRESSED = 256 << 20
# torch's legacy (pre-zip) format starts with this pickled number.
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_NUMERIC_KINDS = "biuf"

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _StorageType:
    """What a torch archive's storage global resolves to: only its dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _numpy_dtype(spec: object, align: object = False, copy: object = False) -> np.dtype:
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"numpy dtype {spec!r} is not a plain type code")
    dtype = np.dtype(spec)
    if dtype.kind not in _NUMERIC_KINDS:
        raise pickle.UnpicklingError(f"numpy dtype {spec!r} is not numeric")
    return dtype


def _numpy_scalar(dtype: object, data: object = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS:
        raise pickle.UnpicklingError(f"numpy scalar of dtype {dtype!r} is not numeric")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError("numpy scalar without its raw bytes")
    return np.frombuffer(data, dtype=dtype)[0]


def _numpy_reconstruct(subtype: object, shape: object, dtype_code: object) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"numpy array subtype {subtype!r} is not allowed")
    # ndarray.__setstate__ (the BUILD opcode) then sets the dtype, checked in find_class.
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _rebuild_tensor(storage: object, offset: object, size: object, stride: object,
                    *_: object) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor) or not all(
            isinstance(v, int) for v in (offset, *size, *stride)):  # type: ignore[misc]
        raise pickle.UnpicklingError("malformed tensor record")
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()  # type: ignore[arg-type]


# (module, name) -> the object the unpickler gets instead of importing anything.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds plain containers, numbers, strings, numeric numpy values and
    tensors, and refuses every other global. `storages` maps a torch archive's storage keys
    to their raw bytes (empty for a plain pickle)."""

    def __init__(self, data: bytes, storages: dict[str, bytes] | None = None) -> None:
        super().__init__(io.BytesIO(data))
        self._storages = storages or {}

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"it asks for the global {module}.{name}, which is "
                                         "not a plain container, number or tensor")
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise pickle.UnpicklingError(f"unknown persistent object {pid!r:.80}")
        raw = self._storages.get(pid[2])
        if raw is None:
            raise pickle.UnpicklingError(f"tensor storage {pid[2]!r} is missing from the archive")
        return torch.frombuffer(bytearray(raw), dtype=pid[1].dtype) if raw else torch.empty(
            0, dtype=pid[1].dtype)


def _unpickle(data: bytes, where: str, storages: dict[str, bytes] | None = None) -> Any:
    try:
        return RestrictedUnpickler(data, storages).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, RuntimeError, OverflowError) as exc:
        raise DatasetError(f"{where}: refused to load: {exc} (downloaded data is never "
                           "allowed to run code)") from exc


def _torch_archive(data: bytes, where: str) -> Any:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise DatasetError(f"{where}: a zip file, but not a torch.save archive "
                               "(no single data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        storages = {n[len(prefix) + 5:]: archive.read(n) for n in names
                    if n.startswith(prefix + "data/")}
        payload = archive.read(pickles[0])
    except (zipfile.BadZipFile, OSError, KeyError) as exc:
        raise DatasetError(f"{where}: corrupt or truncated torch.save archive: {exc}") from exc
    return _unpickle(payload, where, storages)


def _decompress(data: bytes, where: str, gzipped: bool) -> bytes:
    decoder = zlib.decompressobj(wbits=31 if gzipped else 15)
    try:
        out = decoder.decompress(data, MAX_DECOMPRESSED + 1)
    except zlib.error as exc:
        raise DatasetError(f"{where}: corrupt {'gzip' if gzipped else 'zlib'} data: {exc}"
                           ) from exc
    if len(out) > MAX_DECOMPRESSED:
        raise DatasetError(f"{where}: expands past {MAX_DECOMPRESSED >> 20} MiB; refused")
    if not decoder.eof:
        raise DatasetError(f"{where}: truncated {'gzip' if gzipped else 'zlib'} stream")
    return out


def _is_zlib(data: bytes) -> bool:
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] * 256 + data[1]) % 31 == 0


def load_bytes(data: bytes, where: str, _depth: int = 0) -> Any:
    """The object in one file's bytes (torch.save archive, gzip, joblib zlib or pickle)."""
    if data[:4] == b"PK\x03\x04":
        return _torch_archive(data, where)
    if _depth < 2 and data[:2] == b"\x1f\x8b":
        return load_bytes(_decompress(data, where, gzipped=True), where, _depth + 1)
    if _depth < 2 and _is_zlib(data):
        return load_bytes(_decompress(data, where, gzipped=False), where, _depth + 1)
    if data[:1] == b"\x80":
        value = _unpickle(data, where)
        if isinstance(value, int) and value == _LEGACY_TORCH_MAGIC:
            raise DatasetError(f"{where}: torch's legacy (pre-1.6) serialisation is not "
                               "supported; re-save it with a current torch.save")
        return value
    raise DatasetError(f"{where}: not a torch.save archive, gzip, joblib or pickle file "
                       f"(starts with {data[:4]!r})")


def load_file(path: str | Path) -> Any:
    """Load one downloaded file safely; DatasetError naming it if it is malformed or unsafe."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read: {exc}") from exc
    if not data:
        raise DatasetError(f"{path}: empty file")
    return load_bytes(data, str(path))
