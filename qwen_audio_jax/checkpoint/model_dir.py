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

A damaged model dir (a config.json edited to other shapes, array files deleted or truncated, an unreadable
metadata file) is one CheckpointError naming the dir and what is wrong: the stored shapes are checked against
the config before any array is read, and a file that fails while read is reported in our words. Orbax's own log
lines and advice (which a user cannot act on) are kept off the terminal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
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


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax logs a failed read (absl warnings: "malformed checkpoint", "incompatible handler", its advice)
    before the same error reaches us; we report it once, as one line naming the model dir."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        absl.setLevel(level)


# TensorStore's status codes, as a reader of a model dir would say them.
_READ_FAILURES = (
    ("NOT_FOUND", "a file is missing"),
    ("DATA_LOSS", "a file is truncated or damaged"),
    ("OUT_OF_RANGE", "a file is truncated"),
    ("FAILED_PRECONDITION", "a file is damaged"),
    ("INVALID_ARGUMENT", "a file is damaged"),
)


def _why_unreadable(exc: BaseException) -> str:
    """What a failed read says about the files, in a few words, from anywhere in the exception's chain."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        if isinstance(e, json.JSONDecodeError):
            return "a metadata file is truncated or not valid JSON"
        text = str(e)
        if "has size of 0 bytes" in text:  # what TensorStore says of a data file that was deleted
            return "a file is missing or empty"
        if "No valid PyTree checkpointable" in text:  # Orbax, of a params/ dir without its metadata files
            return "its metadata files are missing"
        for code, words in _READ_FAILURES:
            if code in text:
                array = re.search(r'"([\w.]+)/(?:c/|zarr\.json)', text)
                return f"{words}: the array {array.group(1)}" if array else words
        if isinstance(e, FileNotFoundError):
            return "a file is missing"
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return re.split(r" See full TensorStore| \[tensorstore_spec", first)[0][:160]


def _unreadable(model_dir, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{model_dir}: the weights under {PARAMS_DIR}/ cannot be read ({_why_unreadable(exc)}); the model dir "
        "is damaged: copy it again or convert the model again."
    )


def check_params(model_dir: str | Path, abstract: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The stored params' metadata (see `param_metadata`), checked against `abstract` (the tree the config
    describes: shapes of jax.ShapeDtypeStruct or arrays): every param present with its shape, none extra.
    A config.json edited to other sizes is one line here instead of a failure inside Orbax's reader."""
    stored = param_metadata(model_dir)
    want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract, sep="/").items()}
    wrong = [
        f"{k}: config.json gives {want[k]}, {PARAMS_DIR}/ holds {stored[k][0]}"
        for k in want
        if k in stored and stored[k][0] != want[k]
    ]
    wrong += [f"{k} is not in {PARAMS_DIR}/" for k in sorted(set(want) - set(stored))]
    wrong += [f"{PARAMS_DIR}/ holds {k}, which config.json does not describe" for k in sorted(set(stored) - set(want))]
    if wrong:
        more = f" and {len(wrong) - 2} more" if len(wrong) > 2 else ""
        raise CheckpointError(
            f"{model_dir}: config.json does not match the stored weights ({'; '.join(wrong[:2])}{more}); it was "
            "edited or belongs to another model: put back the config.json written with these weights, or convert "
            "the model again."
        )
    return stored


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
    if abstract is not None:
        check_params(model_dir, abstract)
    try:
        with _quiet_orbax():
            return ocp.load(path, abstract)
    except Exception as e:  # noqa: BLE001 - shapes and names were checked: what fails now is a file's content
        raise _unreadable(model_dir, e) from e


def load_param(model_dir: str | Path, path: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Reads one stored param ("a/b/c") into host memory without touching the others (streaming export)."""
    target = traverse_util.unflatten_dict({tuple(path.split("/")): np.empty(shape, dtype)})
    ctx = ocp.Context()
    ctx.pytree.loading.partial_load = True
    try:
        with ctx, _quiet_orbax():
            tree = ocp.load(Path(model_dir).absolute() / PARAMS_DIR, target)
    except Exception as e:  # noqa: BLE001 - the metadata was read: what fails now is a file's content
        raise _unreadable(model_dir, e) from e
    return traverse_util.flatten_dict(tree, sep="/")[path]


def param_metadata(model_dir: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{"a/b/c": (shape, dtype)} of the stored params, without reading them."""
    if not (Path(model_dir) / PARAMS_DIR).is_dir():
        raise CheckpointError(f"{model_dir}: no {PARAMS_DIR}/ directory; the model dir is incomplete.")
    try:
        with _quiet_orbax():
            meta = ocp.metadata(Path(model_dir).absolute() / PARAMS_DIR).metadata
    except Exception as e:  # noqa: BLE001 - any failure to read the metadata is a damaged or partial dir
        raise CheckpointError(
            f"{model_dir}: the weights' metadata under {PARAMS_DIR}/ cannot be read ({_why_unreadable(e)}); the "
            "model dir is damaged or incomplete: copy it again or convert the model again."
        ) from e
    if not isinstance(meta, dict) or not meta:  # Orbax logs a handler failure and hands back None
        raise CheckpointError(
            f"{model_dir}: the weights' metadata under {PARAMS_DIR}/ is missing or damaged; copy the model dir "
            "again or convert the model again."
        )
    flat = traverse_util.flatten_dict(meta, sep="/")
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flat.items()}
