"""The training loop (DPO or SFT): resume, steps, metrics, checkpoints, the final model directory.

    run = TrainingRun.build(load_run_config("configs/dpo_tiny.yaml", overrides))
    summary = train(run)

Re-running the same command resumes from the latest checkpoint in output_dir (bit-identically: the data
iterator's state and the RNG are in the checkpoint); a resumed run whose settings differ from the ones it was
started with is refused, except for `train.steps` (extending a run) and the bookkeeping keys.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
from tqdm import tqdm

from qwen_audio_jax.checkpoint.model_dir import copy_aux_files, read_source_config, save_params, write_config
from qwen_audio_jax.checkpoint.safe_write import atomic_directory, check_destination, deferred_interrupt, mark
from qwen_audio_jax.errors import ConfigError, QwenAudioError
from qwen_audio_jax.training.checkpointing import TrainCheckpoints, abstract_like
from qwen_audio_jax.training.metrics import MetricsWriter
from qwen_audio_jax.training.reference import load_reference_table
from qwen_audio_jax.training.run import TrainingRun

RUN_FILE = "run_config.json"
# Keys a resumed run may change: how long it runs, how it logs and checkpoints, where it runs.
MUTABLE_KEYS = (
    "train.steps",
    "train.log_every",
    "train.num_threads",
    "checkpoint.every",
    "checkpoint.keep",
    "checkpoint.async_save",
    "mesh",
    "output_dir",
)


class TrainingError(QwenAudioError):
    """Training cannot continue (e.g. a non-finite loss); the message says what is intact and what to change."""


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume(run: TrainingRun, log: Callable[[str], None]) -> None:
    """Records the run's settings on first start; on resume refuses changed ones (one line naming them)."""
    path = run.out / RUN_FILE
    current = json.loads(json.dumps(run.cfg.to_dict()))
    if not path.exists():
        if jax.process_index() == 0:
            path.write_text(json.dumps(current, indent=2) + "\n")
        return
    before = _flat(json.loads(path.read_text()))
    now = _flat(current)
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k) and k not in MUTABLE_KEYS)
    if changed:
        detail = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
        raise ConfigError(
            f"{run.out} holds a run started with other settings ({detail}); resume it with its own "
            "settings or train into a new output_dir."
        )
    if before.get("train.steps") != now.get("train.steps"):
        log(
            f"note: train.steps changed {before.get('train.steps')} -> {now.get('train.steps')}; the learning-rate "
            "schedule follows the new length from here on."
        )
        if jax.process_index() == 0:
            path.write_text(json.dumps(current, indent=2) + "\n")


def train(run: TrainingRun, *, log: Callable[[str], None] = print, progress: bool = True) -> dict:
    cfg = run.cfg
    log = log if jax.process_index() == 0 else (lambda m: None)
    progress = progress and jax.process_index() == 0
    check_resume(run, log)  # output_dir was checked, locked and (when the tool made it) marked by TrainingRun.build
    with run.placement.activate():
        state = run.initial_state()
        ref_params, ref_table = None, None
        if run.preference and cfg.reference.mode == "precomputed":
            ref_table = load_reference_table(run.out, run.fingerprint, cfg)
        elif run.preference:
            ref_params = (
                run.load_params(cfg.reference.model)
                if cfg.reference.model
                else jax.tree_util.tree_map(jnp.copy, state.params)
            )
        ckpt = TrainCheckpoints(
            run.out / "checkpoints",
            every=cfg.checkpoint.every,
            keep=cfg.checkpoint.keep,
            async_save=cfg.checkpoint.async_save,
        )
        it = run.iterator(cfg.train.steps)
        start = ckpt.latest_step() or 0
        if start:
            try:
                state, data_state = ckpt.restore(start, abstract_like(state))
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(
                    f"{run.out / 'checkpoints'}: step {start} does not match this model "
                    f"({str(e).splitlines()[0][:120]}); train into a new output_dir."
                ) from e
            it.set_state(data_state)
            log(f"resumed from step {start} ({run.out / 'checkpoints'})")
        metrics_out = MetricsWriter(run.out, enabled=jax.process_index() == 0, resume_after=start)
        bar = tqdm(total=cfg.train.steps, initial=start, desc="dpo" if run.preference else "sft", disable=not progress)
        last: dict = {}
        try:
            for step in range(start, cfg.train.steps):
                t0 = time.perf_counter()
                batch, completion = run.next_batch(it, ref_table)
                state, metrics = run.step_fn(completion, state)(state, batch, ref_params)
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                bad = [k for k, v in last.items() if not math.isfinite(v)]
                if bad:
                    ckpt.wait()
                    raise TrainingError(
                        f"step {step + 1}: non-finite metrics ({', '.join(bad)}); the last good checkpoint is step "
                        f"{ckpt.latest_step()} in {run.out / 'checkpoints'}. Lower optim.learning_rate or check "
                        "the data, then resume."
                    )
                last["tokens_per_s"] = last.get("tokens", 0.0) / (time.perf_counter() - t0)
                last["step"] = step + 1
                if (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.steps:
                    metrics_out.write(step + 1, last)
                ckpt.save(step + 1, state, it.get_state(), force=step + 1 == cfg.train.steps)
                bar.update()
                shown = {"acc": f"{last['rewards/accuracies']:.2f}"} if run.preference else {}
                bar.set_postfix(loss=f"{last['loss']:.4f}", **shown)
        finally:
            bar.close()
            ckpt.close()
            metrics_out.close()
        final = run.out / "model"
        save_final_model(state.params, run.config, cfg.model, final)
    log(f"done: {cfg.train.steps} steps; final model: {final}")
    return {"final_model": str(final), "last_metrics": last, "data": run.report.to_dict()}


def precompute_reference(run: TrainingRun, *, log: Callable[[str], None] = print, progress: bool = True) -> Path:
    """One reference pass over the validated data -> reference_logps.json (see training/reference.py)."""
    from qwen_audio_jax.training import reference

    if not run.preference:
        raise ConfigError("SFT needs no reference log-probs.")
    ref_dir = reference.reference_model_dir(run.cfg)
    with run.placement.activate():
        params = run.load_params(ref_dir)
        table = reference.compute_reference_table(
            run.module,
            params,
            run.examples,
            run.processor,
            run.placement,
            run.config.pad_token_id,
            run.cfg.train.batch_size,
            run.completion_suffix,
            progress=progress,
        )
    path = reference.save_reference_table(run.out, table, run.fingerprint, reference.model_identity(ref_dir))
    log(f"reference log-probs of {len(table)} pairs -> {path}")
    return path


def save_final_model(params, config, base_model_dir, dst: Path) -> None:
    """Writes a model dir (fp32 params, config, the base model's tokenizer/preprocessor files and its source
    HF config, so export-hf writes the original format back). Never over the base model (a sources check), only
    over a model dir the tool wrote; a Ctrl-C waits for the params write to finish, then cleans up."""
    source = read_source_config(base_model_dir)
    if jax.process_count() == 1:
        with atomic_directory(dst, "model", sources={"model": base_model_dir}, overwrite=True) as tmp:
            with deferred_interrupt():
                save_params(tmp, params)
            write_config(tmp, config, "float32", source)
            copy_aux_files(Path(base_model_dir), tmp)
        return
    # Multi-host: Orbax writes the params collectively (each host its shards); process 0 writes the rest.
    from jax.experimental import multihost_utils

    check_destination(dst, sources={"model": base_model_dir}, overwrite=True)
    save_params(dst, params, overwrite=True)
    if jax.process_index() == 0:
        write_config(dst, config, "float32", source)
        copy_aux_files(Path(base_model_dir), dst)
        mark(dst, "model")
    multihost_utils.sync_global_devices("final model written")
