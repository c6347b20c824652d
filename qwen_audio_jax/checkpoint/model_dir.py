"""Our model directory: what `convert` writes and every other command reads.

    MODEL/
      config.json        {"format": "qwen-audio-jax", "format_version": 1, "param_dtype": ..., "model": {...}}
      params/            Orbax PyTree checkpoint, param paths mirroring the HF names (DESIGN decision 1)
      tokenizer.json | vocab.json + merges.txt, tokenizer_config.json, ... (copied from the HF checkpoint)
      preprocessor_config.json, chat_template.json, generation_config.json (when the source has them)

Directories are written atomically: into a temp sibling, renamed into place only when complete, so a failed
or interrupted write never leaves a partial DST.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
from flax import traverse_util
from orbax.checkpoint.experimental import v1 as ocp

from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.errors import CheckpointError, ConfigError

FORMAT = "qwen-audio-jax"
FORMAT_VERSION = 1
PARAMS_DIR = "params"
# Non-weight files a checkpoint carries that inference needs (tokenizer, chat template, feature extractor).
AUX_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "generation_config.json",
    "qwen.tiktoken",
    "mel_filters.npz",
)


@contextlib.contextmanager
def atomic_directory(dst: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields a fresh temp dir beside `dst`; on success it replaces `dst`, on any error it is deleted."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst} already exists; choose another destination or pass --overwrite.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        if dst.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
            dst.rename(old / dst.name)
            tmp.rename(dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_aux_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in AUX_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def write_config(model_dir: Path, config: ModelConfig, param_dtype: str) -> None:
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "param_dtype": param_dtype, "model": config.to_dict()}
    (Path(model_dir) / "config.json").write_text(json.dumps(doc, indent=2) + "\n")


def read_config_json(directory: str | Path, expected: str) -> tuple[Path, dict]:
    """(path, parsed config.json of `directory`); `expected` finishes the error for a missing file."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json; pass {expected}.")
    try:
        return path, json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}).") from e


def read_model_dir_config(model_dir: str | Path) -> tuple[ModelConfig, str]:
    """(ModelConfig, stored param dtype name); a clear error for a Hugging Face dir or a non-model dir."""
    path, doc = read_config_json(model_dir, "a directory written by `qwen-audio-jax convert`")
    if doc.get("format") != FORMAT:
        if "model_type" in doc:
            raise CheckpointError(
                f"{model_dir} is a Hugging Face checkpoint; convert it first: qwen-audio-jax convert {model_dir} OUT"
            )
        raise CheckpointError(f"{path}: not a qwen-audio-jax model config.")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: format_version {doc.get('format_version')} is not supported by this version.")
    return ModelConfig.from_dict(doc["model"]), doc.get("param_dtype", "float32")


class ParamWriter:
    """Streams param groups into an Orbax checkpoint (partial saves), so peak memory is one group."""

    def __init__(self, model_dir: Path):
        self.path = Path(model_dir) / PARAMS_DIR
        self._n = 0

    def add(self, path: str, value: np.ndarray) -> None:
        with _writing_context():
            ocp.partial.save(self.path, traverse_util.unflatten_dict({tuple(path.split("/")): value}))
        self._n += 1

    def finalize(self) -> None:
        if self._n:
            with _writing_context():
                ocp.partial.finalize(self.path)


def _writing_context() -> ocp.Context:
    ctx = ocp.Context()
    # Saves are synchronous, so Orbax need not deep-copy host arrays first (that copy doubled peak memory).
    ctx.memory.deepcopy_host_arrays = False
    # Weights barely compress; zstd only costs time.
    ctx.array.saving.use_compression = False
    # Bounded chunks keep tensorstore's write buffers small and let a host read just its shard on restore.
    ctx.array.saving.storage_options.chunk_byte_size = 64 * 1024**2
    return ctx


def save_params(model_dir: Path, params: dict, overwrite: bool = False) -> None:
    """Writes a whole param tree (numpy or jax arrays, possibly sharded over hosts: a collective) at once."""
    with _writing_context():
        ocp.save(Path(model_dir) / PARAMS_DIR, params, overwrite=overwrite)


def load_params(model_dir: str | Path, abstract: dict | None = None) -> dict:
    """Restores params. `abstract`: a tree of jax.ShapeDtypeStruct (dtype and sharding of each leaf); each host
    then reads only its shards, straight into the target sharding (DESIGN decision 9). Without it: host numpy."""
    path = Path(model_dir) / PARAMS_DIR
    if not path.is_dir():
        raise CheckpointError(f"{model_dir}: no {PARAMS_DIR}/ directory; the model dir is incomplete.")
    try:
        return ocp.load(path, abstract)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise CheckpointError(f"{path}: cannot restore params ({e}).") from e


def load_param(model_dir: str | Path, path: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Reads one stored param ("a/b/c") into host memory without touching the others (streaming export)."""
    target = traverse_util.unflatten_dict({tuple(path.split("/")): np.empty(shape, dtype)})
    ctx = ocp.Context()
    ctx.pytree.loading.partial_load = True
    with ctx:
        tree = ocp.load(Path(model_dir) / PARAMS_DIR, target)
    return traverse_util.flatten_dict(tree, sep="/")[path]


def param_metadata(model_dir: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{"a/b/c": (shape, dtype)} of the stored params, without reading them."""
    meta = ocp.metadata(Path(model_dir) / PARAMS_DIR).metadata
    flat = traverse_util.flatten_dict(meta, sep="/")
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flat.items()}


def tree_paths(tree: dict) -> dict[str, object]:
    return traverse_util.flatten_dict(tree, sep="/")

