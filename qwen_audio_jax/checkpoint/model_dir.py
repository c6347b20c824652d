"""Our model directory: what `convert` writes and every other command reads.

    MODEL/
      config.json        {"format": "qwen-audio-jax", "format_version": 1, "param_dtype": ..., "model": {...}}
      params/            Orbax PyTree checkpoint, param paths mirroring the HF names (docs/decisions.md,
                         "Functional Flax")
      hf_config.json     the source checkpoint's own config.json (export-hf writes it back unchanged)
      tokenizer.json | vocab.json + merges.txt | qwen.tiktoken, tokenizer_config.json, ... (from the source)
      preprocessor_config.json, chat_template.json, generation_config.json (when the source has them)
      .written-by-qwen-audio-jax   the marker that lets --overwrite replace it (checkpoint/safe_write.py)

Directories are written atomically (`safe_write.atomic_directory`), so a failed or interrupted write never
leaves a partial DST. Paths may be relative: they are made absolute before Orbax sees them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from flax import traverse_util
from orbax.checkpoint.experimental import v1 as ocp

from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.errors import CheckpointError, ConfigError

FORMAT = "qwen-audio-jax"
FORMAT_VERSION = 1
PARAMS_DIR = "params"
SOURCE_CONFIG = "hf_config.json"
# Non-weight files a checkpoint carries that inference needs (tokenizer, chat template, feature extractor),
# and Qwen-Audio v1's remote code, so an export loads with trust_remote_code as the original does.
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
    "configuration_qwen.py",
    "modeling_qwen.py",
    "tokenization_qwen.py",
    "qwen_generation_utils.py",
    "audio.py",
    "cpp_kernels.py",
)


def copy_aux_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in AUX_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def write_config(model_dir: Path, config: ModelConfig, param_dtype: str, source_config: dict | None = None) -> None:
    """Our config.json (param_dtype: the stored dtype name, or "mixed"), plus the source's own HF config."""
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "param_dtype": param_dtype, "model": config.to_dict()}
    (Path(model_dir) / "config.json").write_text(json.dumps(doc, indent=2) + "\n")
    if source_config is not None:
        (Path(model_dir) / SOURCE_CONFIG).write_text(json.dumps(source_config, indent=2) + "\n")


def read_source_config(model_dir: str | Path) -> dict | None:
    """The HF config.json the model was converted from (None for models built here)."""
    path = Path(model_dir) / SOURCE_CONFIG
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); the model dir is damaged.") from e


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
        self.path = Path(model_dir).absolute() / PARAMS_DIR
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
        ocp.save(Path(model_dir).absolute() / PARAMS_DIR, params, overwrite=overwrite)


def load_params(model_dir: str | Path, abstract: dict | None = None) -> dict:
    """Restores params. `abstract`: a tree of jax.ShapeDtypeStruct (dtype and sharding of each leaf); each host
    then reads only its shards, straight into the target sharding (docs/decisions.md §9). Without it: host numpy."""
    path = Path(model_dir).absolute() / PARAMS_DIR
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
        tree = ocp.load(Path(model_dir).absolute() / PARAMS_DIR, target)
    return traverse_util.flatten_dict(tree, sep="/")[path]


def param_metadata(model_dir: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{"a/b/c": (shape, dtype)} of the stored params, without reading them."""
    try:
        meta = ocp.metadata(Path(model_dir).absolute() / PARAMS_DIR).metadata
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise CheckpointError(
            f"{model_dir}: cannot read the params' metadata ({e}); the model dir is incomplete."
        ) from e
    flat = traverse_util.flatten_dict(meta, sep="/")
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flat.items()}
