"""The training loop (DPO or SFT): resume, steps, metrics, checkpoints, the final model directory.

    run = TrainingRun.build(load_run_config("configs/dpo_tiny.yaml", overrides))
    summary = train(run)

Re-running the same command resumes from the latest checkpoint in output_dir (bit-identically: the data
iterator's state and the RNG are in the checkpoint); a resumed run whose settings or data differ from the ones
it was started with is refused before anything runs (training/resume.py, from TrainingRun.build).

Every checkpoint holds finite weights: a step whose loss, gradients or new weights are not finite stops the run
before anything of it is saved, with one line naming the last good checkpoint and how to go on from it.
"""

from __future__ import annotations

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
from qwen_audio_jax.training.step import PARAMS_FINITE


class TrainingError(QwenAudioError):
    """Training cannot continue (e.g. a non-finite loss); the message says what is intact and what to change."""


def train(run: TrainingRun, *, log: Callable[[str], None] = print, progress: bool = True) -> dict:
    cfg = run.cfg
    log = log if jax.process_index() == 0 else (lambda m: None)
    progress = progress and jax.process_index() == 0
    # output_dir was checked, locked, marked (when the tool made it) and its resume checked by TrainingRun.build.
    with run.placement.activate():
        state = run.initial_state()
        base = run.load_base() if run.lora else None  # LoRA: the frozen base, held once
        ref_params, ref_table = None, None
        if run.preference and cfg.reference.mode == "precomputed":
            ref_table = load_reference_table(run.out, run.fingerprint, cfg)
        elif run.preference and cfg.reference.model:
            ref_params = run.load_params(cfg.reference.model)
        elif run.preference and not run.lora:  # LoRA's reference is the base with its adapters off: no copy
            ref_params = jax.tree_util.tree_map(jnp.copy, state.params)
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
                state, metrics = run.step_fn(completion, state)(state, batch, ref_params, base)
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                params_finite = last.pop(PARAMS_FINITE) == 1.0
                bad = [k for k, v in last.items() if not math.isfinite(v)]
                if bad or not params_finite:  # checked before the state is saved: no checkpoint is non-finite
                    raise _non_finite(run, ckpt, step + 1, bad)
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
        if run.lora:
            save_final_adapter(run.placement.to_host(state.params), run, final)
        else:
            save_final_model(state.params, run.config, cfg.model, final)
    log(f"done: {cfg.train.steps} steps; final model: {final}")
    return {"final_model": str(final), "last_metrics": last, "data": run.report.to_dict()}


def _non_finite(run: TrainingRun, ckpt: TrainCheckpoints, step: int, bad: list[str]) -> TrainingError:
    """The error of a step with non-finite numbers, after making the latest checkpoint one to go on from.

    A non-finite loss or gradient at `step` comes from the weights of step - 1 and the step's batch, neither of
    which a learning rate changes: resumed from a checkpoint of step - 1, the run would stop here again, so
    that checkpoint is removed. Finite weights that overflow in the update (with a finite loss) leave step - 1's
    weights good: nothing of `step` was saved. The advice works as printed: the learning rate may change on
    resume (training/resume.py)."""
    ckpt.wait()
    where = run.out / "checkpoints"
    what = f"non-finite {', '.join(bad)}" if bad else "the update made the weights non-finite"
    removed = ""
    if bad and step - 1 in ckpt.manager.all_steps():
        ckpt.manager.delete(step - 1)
        removed = f"; checkpoint {step - 1} was removed (its weights give this step's non-finite values)"
    latest = ckpt.latest_step()
    optim = run.cfg.optim
    lower = (
        f"a lower optim.learning_rate and optim.min_learning_rate (now {optim.learning_rate:g} and "
        f"{optim.min_learning_rate:g})"
    )
    if latest is None:
        return TrainingError(
            f"step {step}: {what}{removed}; no checkpoint was saved before it. Run the same command again with "
            f"{lower} to start over, or check the data."
        )
    return TrainingError(
        f"step {step}: {what}{removed}; the last good checkpoint is step {latest} in {where}. Run the same "
        f"command again with {lower} to resume from it, or check the data."
    )


def precompute_reference(run: TrainingRun, *, log: Callable[[str], None] = print, progress: bool = True) -> Path:
    """One reference pass over the validated data -> reference_logps.json (see training/reference.py)."""
    from qwen_audio_jax.training import reference

    if not run.preference:
        raise ConfigError("SFT needs no reference log-probs.")
    ref_dir = reference.reference_model_dir(run.cfg)
    with run.placement.activate():
        if run.lora and not run.cfg.reference.model:  # the base with the adapters off, as in training
            module, params = run.module.clone(lora=None), run.load_base()
        elif run.lora:
            module, params = run.module.clone(lora=None, quantized=False), run.load_params(ref_dir)
        else:
            module, params = run.module, run.load_params(ref_dir)
        table = reference.compute_reference_table(
            module,
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


def save_final_adapter(adapters: dict, run: TrainingRun, dst: Path) -> None:
    """A LoRA run's model: a PEFT adapter dir (conversion/peft.py) naming the base model dir it was trained on,
    so `generate --model DST`, `--adapter DST`, `export-hf` and PEFT itself all read it. Process 0 writes it."""
    from qwen_audio_jax.conversion.peft import write_adapter

    base = str(Path(run.cfg.model).absolute())
    if jax.process_index() == 0:
        with atomic_directory(dst, "model", sources={"model": run.cfg.model}, overwrite=True) as tmp:
            write_adapter(tmp, adapters, run.config, run.lora, base_model=base)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("final adapter written")


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
