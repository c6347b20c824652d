"""The DPO / SFT training loop: setup, resume, steps, metrics, checkpoints, the final model directory.

    Trainer(run_config).run()

Single process or multi-host (after `jax.distributed.initialize`): every process runs the same program over
the global mesh; each reads its own slice of the data, and only process 0 writes metrics and small files.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from qwen_audio_jax.checkpoint import model_dir as md
from qwen_audio_jax.errors import ConfigError, QwenAudioError
from qwen_audio_jax.generation.buckets import Buckets
from qwen_audio_jax.model.params import abstract_params, build_model
from qwen_audio_jax.sharding import axes as ax
from qwen_audio_jax.sharding import mesh as shd
from qwen_audio_jax.text.processor import Processor
from qwen_audio_jax.training import data as train_data
from qwen_audio_jax.training.checkpointing import TrainCheckpoints, abstract_like
from qwen_audio_jax.training.metrics import MetricsWriter
from qwen_audio_jax.training.optimizer import make_optimizer
from qwen_audio_jax.training.pipeline import PipelineConfig, batch_shape, collate_step, make_iterator
from qwen_audio_jax.training.reference import load_reference_table
from qwen_audio_jax.training.run_config import RunConfig
from qwen_audio_jax.training.step import StepConfig, TrainBatch, TrainState, train_step


class TrainingError(QwenAudioError):
    """Training cannot continue (e.g. a non-finite loss); the message says what is intact and what to change."""


class Trainer:
    def __init__(self, cfg: RunConfig, *, log: Callable[[str], None] = print, progress: bool = True):
        self.cfg = cfg
        self.log = log if jax.process_index() == 0 else (lambda m: None)
        self.progress = progress and jax.process_index() == 0
        self.out = Path(cfg.output_dir)
        self.sft = not cfg.loss.needs_reference
        self.batch_shapes: set[tuple[int, int, int, int]] = set()  # (length, clips, frames, completion) buckets seen
        if not cfg.model:
            raise ConfigError("set `model:` (a model dir written by `qwen-audio-jax convert`).")
        if not cfg.data.train:
            raise ConfigError("set `data.train:` (a JSONL file of preference pairs or SFT examples).")

    # ---- setup ------------------------------------------------------------------------------------------------
    def _setup(self):
        cfg = self.cfg
        self.mesh = shd.make_mesh(cfg.mesh) if cfg.mesh else None
        self.rules = ax.TRAIN_RULES
        self.config, _ = md.read_model_dir_config(cfg.model)
        self.processor = Processor.from_model_dir(cfg.model)
        self.examples, self.report = self._load_data()
        divisor = shd.batch_divisor(self.mesh, self.rules) if self.mesh else 1
        procs = jax.process_count()
        if cfg.train.batch_size % procs:
            raise ConfigError(f"train.batch_size {cfg.train.batch_size} must be a multiple of the {procs} processes.")
        self.local_pairs = cfg.train.batch_size // procs
        # A global batch that does not divide the batch axes is padded with inactive pairs, not refused.
        self.local_padded = -(-(self.local_pairs * procs) // divisor) * divisor // procs
        self.model = build_model(self.config, dtype=jnp.dtype(cfg.train.compute_dtype), remat_policy=cfg.train.remat)
        self.tx, self.lr_fn = make_optimizer(cfg.optim, cfg.train.steps)
        self.step_cfg = StepConfig(cfg.loss, cfg.optim.freeze_audio_encoder, cfg.optim.freeze_projector)

    def _load_data(self):
        cfg = self.cfg
        reader = train_data.read_sft_file if self.sft else train_data.read_preference_file
        examples, bad = reader(cfg.data.train)
        self.suffix = self.processor.tokenizer.id_to_token(self.config.eos_token_id) or ""
        pairs, report = train_data.validate_examples(
            examples, self.processor, cfg.data.max_length, bad_records=bad, source=cfg.data.train,
            completion_suffix=self.suffix, keep_mels=False,
        )  # fmt: skip
        kept = {p.id for p in pairs}
        self.fingerprint = train_data.pair_fingerprint(pairs)
        self.log(f"data: {report.summary()}")
        if jax.process_index() == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "data_report.json").write_text(json.dumps(report.to_dict(), indent=2))
        return [e for e in examples if e.id in kept], report

    def _param_shardings(self):
        if self.mesh is None:
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            return jax.tree_util.tree_map(lambda _: device, abstract_params(self.config))
        return shd.param_shardings(self.mesh, self.config, self.rules)

    def _load_params(self, model_dir, shardings):
        target = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=s),
                                        abstract_params(self.config), shardings)  # fmt: skip
        return md.load_params(model_dir, target)  # fp32 master weights, whatever the stored dtype

    def _initial_state(self, p_sh) -> TrainState:
        params = self._load_params(self.cfg.model, p_sh)
        opt_state = jax.jit(self.tx.init)(params)
        rng = jax.random.PRNGKey(self.cfg.train.seed)
        state = TrainState(step=jnp.asarray(0, jnp.int32), params=params, opt_state=opt_state, rng=rng)
        if self.mesh is None:  # commit every leaf like the step's outputs, so step 2 reuses step 1's program
            state = jax.device_put(state, jax.devices()[0])
        return state

    def compiled_programs(self) -> int:
        """Train-step programs compiled so far (one per batch-shape bucket seen)."""
        return sum(f._cache_size() for f in self._steps.values())

    def _step_fn(self, completion: int):
        """The jitted step for one completion-length bucket (a static shape of the lm_head pass)."""
        if completion not in self._steps:
            self._steps[completion] = self._jit_step(self._state_sh, self._p_sh, completion)
        return self._steps[completion]

    def _jit_step(self, state_sh, p_sh, completion: int):
        step_cfg = dataclasses.replace(self.step_cfg, max_completion=completion)
        step = functools.partial(train_step, self.model, self.tx, self.lr_fn, step_cfg)
        if self.mesh is None:
            return jax.jit(step, donate_argnums=(0,))
        rep = shd.replicated(self.mesh)
        rows, pairs = self._pair_sharding(2), self._pair_sharding(1)
        batch_sh = TrainBatch(tokens=rows, mask=rows, completion_mask=rows, pair_active=pairs, mel=rep,
                              mel_lengths=rep, ref_logps=self._pair_sharding(2))  # fmt: skip
        ref_sh = p_sh if self.ref_params is not None else None
        return jax.jit(step, in_shardings=(state_sh, batch_sh, ref_sh), out_shardings=(state_sh, rep),
                       donate_argnums=(0,))  # fmt: skip

    # ---- batches --------------------------------------------------------------------------------------------
    def _next_batch(self, it) -> tuple[TrainBatch, int]:
        cfg = self.cfg
        micro = [next(it) for _ in range(cfg.train.grad_accum)]
        shape = batch_shape(micro, Buckets())
        if jax.process_count() > 1:  # every process must build the same shapes
            from jax.experimental import multihost_utils

            local = np.asarray([shape.length, shape.clips, shape.frames, shape.completion])
            sizes = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, 4).max(0)
            shape.length, shape.clips, shape.frames, shape.completion = (int(v) for v in sizes)
        self.batch_shapes.add((shape.length, shape.clips, shape.frames, shape.completion))
        arrays = collate_step(micro, shape, self.config.pad_token_id, self.processor.n_mels, self.ref_table,
                              with_rejected=not self.sft)  # fmt: skip
        arrays = _pad_pairs(arrays, self.local_padded, self.config.pad_token_id)
        return TrainBatch(**{k: self._put(k, v) for k, v in arrays.items()}), shape.completion

    def _pair_sharding(self, pair_axis: int):
        """Split the B (pair) axis of a batch array over the mesh's batch axes."""
        spec = [None] * (pair_axis + 1)
        axes_ = shd.batch_axes(self.mesh, self.rules)
        spec[pair_axis] = (axes_[0] if len(axes_) == 1 else axes_) if axes_ else None
        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*spec))

    # Batch arrays: [A, K, B, ...] (pair axis 2), pair_active [A, B], clips [A, C, ...] (clip axis 1).
    _PAIR_AXIS = {"tokens": 2, "mask": 2, "completion_mask": 2, "ref_logps": 2, "pair_active": 1}

    def _put(self, name: str, x: np.ndarray):
        if self.mesh is None:
            return jnp.asarray(x)
        axis = self._PAIR_AXIS.get(name, 1)
        if jax.process_count() > 1:
            # Every process contributes its slice of pairs (and their clips); concatenating in process order
            # keeps rows and clips aligned, as the audio merge needs, whatever the mesh's device order.
            x = gather_processes(x, axis)
        sharding = shd.replicated(self.mesh) if name not in self._PAIR_AXIS else self._pair_sharding(axis)
        return jax.device_put(x, sharding)

    def precompute_reference(self) -> Path:
        """One reference pass over the validated data -> reference_logps.json (see training/reference.py)."""
        from qwen_audio_jax.training import reference as ref

        if self.sft:
            raise ConfigError("SFT needs no reference log-probs.")
        self._setup()
        ref_dir = ref.reference_model_dir(self.cfg)
        with shd.activated(self.mesh, self.rules):
            params = self._load_params(ref_dir, self._param_shardings())
            table = ref.compute_reference_table(self.model, params, self.examples, self.processor,
                                                self.config.pad_token_id, self.cfg.train.batch_size,
                                                self.suffix, progress=self.progress)  # fmt: skip
        path = ref.save_reference_table(self.out, table, self.fingerprint, ref.model_identity(ref_dir))
        self.log(f"reference log-probs of {len(table)} pairs -> {path}")
        return path

    # ---- the loop -------------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        self._setup()
        p_sh = self._param_shardings()
        with shd.activated(self.mesh, self.rules):
            state = self._initial_state(p_sh)
            self.ref_params, self.ref_table = None, None
            if not self.sft:
                if cfg.reference.mode == "precomputed":
                    self.ref_table = load_reference_table(self.out, self.fingerprint, cfg)
                elif cfg.reference.mode == "model":
                    self.ref_params = (self._load_params(cfg.reference.model, p_sh) if cfg.reference.model
                                       else jax.tree_util.tree_map(jnp.copy, state.params))  # fmt: skip
                else:
                    raise ConfigError(f"reference.mode {cfg.reference.mode!r}: use 'model' or 'precomputed'.")
            ckpt = TrainCheckpoints(self.out / "checkpoints", every=cfg.checkpoint.every, keep=cfg.checkpoint.keep,
                                    async_save=cfg.checkpoint.async_save)  # fmt: skip
            it = make_iterator(self.examples, self.processor,
                               PipelineConfig(self.local_pairs, cfg.train.grad_accum, cfg.train.seed, cfg.train.num_threads,
                                              self.suffix),
                               cfg.train.steps, with_rejected=not self.sft, process_index=jax.process_index(),
                               process_count=jax.process_count())  # fmt: skip
            start = ckpt.latest_step() or 0
            if start:
                state, data_state = ckpt.restore(start, abstract_like(state))
                it.set_state(data_state)
                self.log(f"resumed from step {start} ({self.out / 'checkpoints'})")
            self._state_sh, self._p_sh, self._steps = jax.tree_util.tree_map(lambda x: x.sharding, state), p_sh, {}
            metrics_out = MetricsWriter(self.out, enabled=jax.process_index() == 0, resume_after=start)
            bar = tqdm(total=cfg.train.steps, initial=start, desc="sft" if self.sft else "dpo", disable=not self.progress)
            last = {}
            try:
                for step in range(start, cfg.train.steps):
                    t0 = time.perf_counter()
                    batch, completion = self._next_batch(it)
                    state, metrics = self._step_fn(completion)(state, batch, self.ref_params)
                    last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    if not all(math.isfinite(v) for v in last.values()):
                        ckpt.wait()
                        good = ckpt.latest_step()
                        raise TrainingError(
                            f"step {step + 1}: non-finite metrics ({', '.join(k for k, v in last.items() if not math.isfinite(v))}); "
                            f"the last good checkpoint is step {good} in {self.out / 'checkpoints'}. "
                            "Lower optim.learning_rate or check the data, then resume."
                        )
                    last["tokens_per_s"] = last.get("tokens", 0.0) / (time.perf_counter() - t0)
                    last["step"] = step + 1
                    if (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.steps:
                        metrics_out.write(step + 1, last)
                    ckpt.save(step + 1, state, it.get_state(), force=step + 1 == cfg.train.steps)
                    bar.update()
                    bar.set_postfix(loss=f"{last['loss']:.4f}", **({} if self.sft else {"acc": f"{last['rewards/accuracies']:.2f}"}))
            finally:
                bar.close()
                ckpt.close()
                metrics_out.close()
            final = self.out / "model"
            save_final_model(state.params, self.config, cfg.model, final)
        self.log(f"done: {cfg.train.steps} steps; final model: {final}")
        return {"final_model": str(final), "last_metrics": last, "data": self.report.to_dict()}


def gather_processes(x: np.ndarray, axis: int) -> np.ndarray:
    """Host arrays of every process, concatenated along `axis` in process order (identical on all)."""
    from jax.experimental import multihost_utils

    parts = np.asarray(multihost_utils.process_allgather(x, tiled=False))
    return np.concatenate(list(parts), axis=axis)


def _pad_pairs(arrays: dict, pairs: int, pad_id: int) -> dict:
    """Adds inactive empty pairs (all padding, mask 0, no audio slots) so the batch divides the mesh's batch
    axes. Empty rows matter: a copied row's <|AUDIO|> slots would shift every later row's clips."""
    a, b = arrays["pair_active"].shape
    if pairs == b:
        return arrays
    extra = pairs - b
    out = dict(arrays)
    out["pair_active"] = np.concatenate([arrays["pair_active"], np.zeros((a, extra), np.float32)], axis=1)
    for key, fill in (("tokens", pad_id), ("mask", 0), ("completion_mask", 0), ("ref_logps", 0)):
        if key in arrays:  # [A, K, B, ...]: pad the pair axis
            x = arrays[key]
            out[key] = np.concatenate([x, np.full((*x.shape[:2], extra, *x.shape[3:]), fill, x.dtype)], axis=2)
    return out


def save_final_model(params, config, base_model_dir, dst: Path) -> None:
    """Writes a model dir (fp32 params, config, the base model's tokenizer/preprocessor files)."""
    if jax.process_count() == 1:
        with md.atomic_directory(dst, overwrite=True) as tmp:
            md.save_params(tmp, params)
            md.write_config(tmp, config, "float32")
            md.copy_aux_files(Path(base_model_dir), tmp)
        return
    # Multi-host: Orbax writes the params collectively (each host its shards); process 0 writes the rest.
    from jax.experimental import multihost_utils

    md.save_params(dst, params, overwrite=True)
    if jax.process_index() == 0:
        md.write_config(dst, config, "float32")
        md.copy_aux_files(Path(base_model_dir), dst)
    multihost_utils.sync_global_devices("final model written")
