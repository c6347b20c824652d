"""Reading and writing safetensors without torch, one tensor at a time.

The format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}}, then
the raw little-endian tensor bytes. bf16 maps to `ml_dtypes.bfloat16`, which numpy understands, so a 16 GB
bf16 checkpoint is read tensor by tensor with a seek and a read: no whole-file load, no torch
(docs/decisions.md §8). Every header is validated up front so a corrupt or truncated file fails before any output.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np

from qwen_audio_jax.errors import CheckpointError

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the reference library's own limit


class SafetensorsFile:
    """One .safetensors file: a validated header and per-tensor reads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                raw_len = f.read(8)
                if len(raw_len) < 8:
                    raise CheckpointError(f"{self.path}: file is too short to be safetensors (truncated?).")
                (n,) = struct.unpack("<Q", raw_len)
                if n > _MAX_HEADER or 8 + n > size:
                    raise CheckpointError(f"{self.path}: corrupt safetensors header (length {n}); re-download it.")
                header = json.loads(f.read(n))
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read ({e.strerror}).") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{self.path}: corrupt safetensors header (not JSON); re-download it.") from e
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: corrupt safetensors header; re-download it.")
        header.pop("__metadata__", None)
        self._data_start = 8 + n
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            try:
                dtype = DTYPES[info["dtype"]]
                shape = tuple(int(s) for s in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{self.path}: tensor {name!r} has an invalid header entry ({e}).") from e
            if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or begin < 0:
                raise CheckpointError(f"{self.path}: tensor {name!r} byte range does not match its shape.")
            if self._data_start + end > size:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} extends past the end of the file (truncated download?)."
                )
            self._entries[name] = (dtype, shape, begin, end)

    def names(self) -> list[str]:
        return list(self._entries)

    def info(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        dtype, shape, _, _ = self._entries[name]
        return dtype, shape

    def read(self, name: str) -> np.ndarray:
        dtype, shape, begin, end = self._entries[name]
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin)
            buf = f.read(end - begin)
        if len(buf) != end - begin:
            raise CheckpointError(f"{self.path}: short read for tensor {name!r} (truncated file?).")
        return np.frombuffer(buf, dtype=dtype).reshape(shape)


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None):
    """Writes a safetensors file (tensors contiguous, in the given order); bf16 via ml_dtypes."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    arrays = []
    for name, x in tensors.items():
        x = np.ascontiguousarray(x)
        if x.dtype not in NAMES:
            raise CheckpointError(f"cannot write tensor {name!r} of dtype {x.dtype} to safetensors.")
        header[name] = {"dtype": NAMES[x.dtype], "shape": list(x.shape), "data_offsets": [offset, offset + x.nbytes]}
        offset += x.nbytes
        arrays.append(x)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data section to 8 bytes, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for x in arrays:
            f.write(memoryview(x.reshape(-1).view(np.uint8)))
        f.flush()
        os.fsync(f.fileno())


def iter_files(directory: Path) -> Iterator[Path]:
    yield from sorted(directory.glob("*.safetensors"))
