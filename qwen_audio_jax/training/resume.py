"""What a resumed run must share with the run that wrote its checkpoints: its settings and its data.

A run's first start records both in its output_dir: `run_config.json` (every setting) and `data_identity.json`
(the training file's size and SHA-256). Re-running the command resumes from the latest checkpoint only when both
still hold, so a resumed run is the run it continues: settings that changed are refused, except how long it runs,
its learning rate (the way out of a non-finite step, see training/loop.py) and the bookkeeping keys; a data file
whose content changed is refused (the data iterator's saved position would index other examples). With no
checkpoint in output_dir there is nothing to resume, and the run starts over, recording its settings afresh.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import jax

from qwen_audio_jax.errors import ConfigError, DataError
from qwen_audio_jax.jsonl import open_jsonl
from qwen_audio_jax.training.run_config import RunConfig

RUN_FILE = "run_config.json"
DATA_FILE = "data_identity.json"
# Keys a resumed run may change: how long it runs and at what learning rate (so a run stopped by a non-finite
# step can go on from its last good checkpoint), how it logs and checkpoints, where it runs.
MUTABLE_KEYS = (
    "train.steps",
    "optim.learning_rate",
    "optim.min_learning_rate",
    "train.log_every",
    "train.num_threads",
    "checkpoint.every",
    "checkpoint.keep",
    "checkpoint.async_save",
    "mesh",
    "output_dir",
)
_SCHEDULE_KEYS = ("train.steps", "optim.learning_rate", "optim.min_learning_rate")
_CHUNK = 1 << 22  # 4 MiB reads: the digest streams, so a data file of any size costs no memory


def file_digest(path: str | Path) -> dict:
    """{"bytes", "sha256"} of a file's content, read in chunks. Size and mtime alone would miss an edit that
    keeps the size or a copy that keeps the mtime (`cp -p`, rsync); the digest costs one sequential read of
    the file, which start-up validation has just read too (so it is usually in the page cache)."""
    h = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror}).") from e
    return {"bytes": size, "sha256": h.hexdigest()}


def data_identity(cfg: RunConfig) -> dict:
    """{config key: {"path", "bytes", "sha256"}} of every data file the run trains on."""
    files = {"data.train": cfg.data.train}
    # Checked first as the reader checks it (missing, a directory, a pipe or a device: one line, never opened).
    return {
        key: {"path": str(Path(p).absolute()), **file_digest(open_jsonl(p, "data file"))}
        for key, p in files.items()
        if p
    }


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _write(path: Path, doc: dict) -> None:
    if jax.process_index() == 0:
        path.write_text(json.dumps(doc, indent=2) + "\n")


def check_resume(cfg: RunConfig, out: Path, log: Callable[[str], None], *, resuming: bool) -> None:
    """Records the run's settings and data identity in `out` on a fresh start; on resume (`resuming`: out holds
    a checkpoint) refuses changed settings or changed data, one line naming them and the way out. Runs before
    the data is validated, so a refusal costs nothing and changes no file."""
    settings, data = out / RUN_FILE, out / DATA_FILE
    current = json.loads(json.dumps(cfg.to_dict()))
    identity = data_identity(cfg)
    if not resuming or not settings.exists():
        _write(settings, current)
        _write(data, identity)
        return
    before, now = _flat(json.loads(settings.read_text())), _flat(current)
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k) and k not in MUTABLE_KEYS)
    if changed:
        detail = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
        raise ConfigError(
            f"{out} holds a run started with other settings ({detail}); resume it with its own "
            "settings or train into a new output_dir."
        )
    _check_data(out, data, identity, log)
    moved = [k for k in _SCHEDULE_KEYS if before.get(k) != now.get(k)]
    if moved:
        detail = ", ".join(f"{k} {before.get(k)} -> {now.get(k)}" for k in moved)
        log(f"note: {detail}; the learning-rate schedule follows the new values from here on.")
    if moved or before != now:
        _write(settings, current)


def _check_data(out: Path, path: Path, identity: dict, log: Callable[[str], None]) -> None:
    if not path.exists():  # a run started before data identities were recorded: nothing to compare with
        log(f"note: {out} has no record of its training data; recording it now ({DATA_FILE}).")
        _write(path, identity)
        return
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({e}); train into a new output_dir.") from e
    for key, now in identity.items():
        was = recorded.get(key)
        if was is None or (was.get("bytes"), was.get("sha256")) != (now["bytes"], now["sha256"]):
            said = "no record" if was is None else f"{was.get('bytes')} bytes, sha256 {str(was.get('sha256'))[:12]}"
            raise ConfigError(
                f"{key} {now['path']} is not the data this run started on ({said}; now {now['bytes']} bytes, "
                f"sha256 {now['sha256'][:12]}), so resuming {out} would continue on other examples; put the "
                "original file back, or train into a new output_dir to start over on this data."
            )
