"""A Hugging Face checkpoint directory as a source of named tensors, read one at a time.

Handles a single `model.safetensors`, sharded safetensors with `model.safetensors.index.json`, and (only with
`allow_pickle=True`) pickled `pytorch_model*.bin` files loaded through torch with `weights_only=True`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qwen_audio_jax.conversion.name_map import canonical_hf_name
from qwen_audio_jax.conversion.safetensors_io import SafetensorsFile
from qwen_audio_jax.errors import CheckpointError


class HFCheckpoint:
    """names() / info(name) -> (dtype, shape) / read(name) -> np.ndarray, over on-disk (v4) tensor names."""

    def __init__(self, directory: str | Path, allow_pickle: bool = False, v1: bool = False):
        self.directory = Path(directory)
        self.v1 = v1  # Qwen-Audio v1 names are used as they are (no transformers v5 renames)
        if not self.directory.is_dir():
            raise CheckpointError(f"{self.directory}: not a directory; pass the Hugging Face checkpoint folder.")
        self._where: dict[str, tuple[object, str]] = {}  # canonical name -> (file object, name in file)
        index = self.directory / "model.safetensors.index.json"
        single = self.directory / "model.safetensors"
        if index.exists():
            self._open_index(index)
        elif single.exists():
            self._add_file(SafetensorsFile(single))
        elif list(self.directory.glob("pytorch_model*.bin")):
            if not allow_pickle:
                raise CheckpointError(
                    f"{self.directory}: only pickled pytorch_model*.bin weights found; pickles can run code, so "
                    "pass --allow-pickle to load them (with torch, weights_only=True) or convert them to safetensors."
                )
            self._open_pickles()
        else:
            raise CheckpointError(f"{self.directory}: no model.safetensors(.index.json) or pytorch_model*.bin found.")

    def _open_index(self, index: Path) -> None:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e}); re-download it.") from e
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (self.directory / s).exists()]
        if missing:
            raise CheckpointError(
                f"{self.directory}: shard(s) {', '.join(missing)} listed in {index.name} are missing; download them."
            )
        files = {s: SafetensorsFile(self.directory / s) for s in shards}
        for name, shard in weight_map.items():
            if name not in files[shard].names():
                raise CheckpointError(f"{self.directory / shard}: tensor {name!r} listed in the index is not in it.")
        for f in files.values():
            self._add_file(f)
        extra = set(self._where) - {canonical_hf_name(n, self.v1) for n in weight_map}
        if extra:
            raise CheckpointError(f"{index}: tensors {sorted(extra)[:3]} are in the shards but not in the index.")

    def _add_file(self, f: SafetensorsFile) -> None:
        for name in f.names():
            key = canonical_hf_name(name, self.v1)
            if key in self._where:
                raise CheckpointError(f"{f.path}: tensor {name!r} appears in more than one shard.")
            self._where[key] = (f, name)

    def _open_pickles(self) -> None:
        try:
            import torch
        except ImportError as e:
            raise CheckpointError("loading pytorch_model*.bin needs torch installed (pip install torch).") from e
        for path in sorted(self.directory.glob("pytorch_model*.bin")):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # torch raises many types for corrupt pickles
                raise CheckpointError(f"{path}: cannot load the pickle safely ({type(e).__name__}: {e}).") from e
            f = _InMemoryFile(path, {k: _torch_to_numpy(v) for k, v in state.items()})
            self._add_file(f)

    def names(self) -> list[str]:
        return list(self._where)

    def info(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        f, key = self._where[name]
        return f.info(key)

    def read(self, name: str) -> np.ndarray:
        f, key = self._where[name]
        return f.read(key)

    def location(self, name: str) -> str:
        f, _ = self._where[name]
        return str(f.path)


class _InMemoryFile:
    def __init__(self, path, tensors: dict[str, np.ndarray]):
        self.path, self._t = path, tensors

    def names(self):
        return list(self._t)

    def info(self, name):
        return self._t[name].dtype, tuple(self._t[name].shape)

    def read(self, name):
        return self._t[name]


class StateDictSource(HFCheckpoint):
    """An in-memory {HF name: array} (e.g. a live torch model's state dict) as a conversion source."""

    def __init__(self, tensors: dict, label: str = "<state dict>", v1: bool = False):
        self.directory = Path(label)
        self.v1 = v1
        self._where = {}
        arrays = {k: v if isinstance(v, np.ndarray) else _torch_to_numpy(v) for k, v in tensors.items()}
        self._add_file(_InMemoryFile(label, arrays))


def _torch_to_numpy(t) -> np.ndarray:
    import ml_dtypes
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()
