"""What a training run is, built once from its run config: `TrainingRun.build(cfg)`.

Everything the loop (training/loop.py) needs is decided here, before any step: the placement, the model, its
validated data, the optimizer, the shardings. The object is frozen; nothing is added to it later. (The
per-bucket jitted steps live in a dict created here, filled as buckets are met.)

Single process or multi-host (after `jax.distributed.initialize`): every process builds the same run over the
global mesh; each reads its own slice of the data, and only process 0 writes metrics and small files.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp

from qwen_audio_jax.batching.buckets import Buckets
from qwen_audio_jax.batching.device_batch import DeviceBatch
from qwen_audio_jax.checkpoint.model_dir import load_params, read_model_dir_config
from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.errors import ConfigError, OutputError
from qwen_audio_jax.model.lora import LoraSpec, init_adapters
from qwen_audio_jax.model.lora import split as split_adapters
from qwen_audio_jax.model.params import abstract_params, build_module
from qwen_audio_jax.model.quant import quantize_params
from qwen_audio_jax.sharding.placement import Placement
from qwen_audio_jax.text.processor import Processor
from qwen_audio_jax.training.checkpointing import saved_steps
from qwen_audio_jax.training.data_file import validate_file
from qwen_audio_jax.training.optimizer import make_optimizer
from qwen_audio_jax.training.pipeline import (
    CLIP_AXIS,
    PAIR_AXIS,
    PipelineConfig,
    batch_shape,
    collate_step,
    make_iterator,
    pad_pairs,
)
from qwen_audio_jax.training.resume import check_resume
from qwen_audio_jax.training.run_config import RunConfig
from qwen_audio_jax.training.step import StepConfig, TrainBatch, TrainState, train_step


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    cfg: RunConfig
    out: Path
    placement: Placement
    config: ModelConfig
    processor: Processor
    preference: bool  # DPO-style pairs (chosen, rejected, reference) or SFT
    examples: Sequence  # the validated examples, in file order (an index of the data file: training/data_file.py)
    report: object  # training/data.py ValidationReport
    fingerprint: str  # of the validated data (keys the precomputed reference)
    completion_suffix: str  # the end-of-turn token every completion ends with
    local_pairs: int  # examples per micro-batch on this process
    padded_pairs: int  # local_pairs rounded up so the global batch divides the mesh's batch axes
    module: object
    tx: object
    lr_fn: Callable
    step_cfg: StepConfig
    param_shardings: dict  # of the trained tree (TrainState.params): every weight, or with LoRA the adapters
    lora: LoraSpec | None = None  # LoRA / QLoRA (model/lora.py): adapters train over a frozen base held once
    base_shardings: dict | None = None  # with LoRA: the frozen base tree's (int8 kernels with QLoRA)
    steps: dict = dataclasses.field(default_factory=dict)  # completion bucket -> jitted step
    shapes_seen: set = dataclasses.field(default_factory=set)  # the BatchShape buckets of every step so far

    @classmethod
    def build(cls, cfg: RunConfig, log: Callable[[str], None] = print) -> TrainingRun:
        if not cfg.model:
            raise ConfigError("set `model:` (a model dir written by `qwen-audio-jax convert`).")
        if not cfg.data.train:
            raise ConfigError("set `data.train:` (a JSONL file of preference pairs or SFT examples).")
        out = _output_dir(cfg)
        # Before the data is validated: a resume with other settings or other data is refused at once.
        note = log if jax.process_index() == 0 else (lambda m: None)
        check_resume(cfg, out, note, resuming=bool(saved_steps(out / "checkpoints")))
        placement = Placement.create(cfg.mesh)
        procs = jax.process_count()
        if cfg.train.batch_size % procs:
            raise ConfigError(f"train.batch_size {cfg.train.batch_size} must be a multiple of the {procs} processes.")
        config, _ = read_model_dir_config(cfg.model)
        # A request never takes more than max_length tokens: what cannot fit is refused before it is tokenized.
        processor = Processor.from_model_dir(cfg.model, max_tokens=cfg.data.max_length)
        preference = cfg.loss.is_preference
        suffix = processor.tokenizer.id_to_token(config.eos_token_id) or ""
        # The data file is held as an index of its usable records, validated as a stream (training/data_file.py).
        examples, report, fingerprint = validate_file(
            cfg.data.train, processor, cfg.data.max_length, preference, completion_suffix=suffix
        )
        log(f"data: {report.summary()}")
        if jax.process_index() == 0:
            (out / "data_report.json").write_text(json.dumps(report.to_dict(), indent=2))
        local = cfg.train.batch_size // procs
        padded = placement.round_batch(local * procs) // procs  # padded with inactive pairs, never refused
        lora = cfg.lora.spec(config.is_v1) if cfg.lora.enabled else None
        tx, lr_fn = make_optimizer(cfg.optim, cfg.train.steps, config.audio.num_layers, adapters_only=bool(lora))
        if lora:  # gradients reach the adapters only: none through the projector, the tower only if adapted
            step_cfg = StepConfig(cfg.loss, not lora.audio, True, augment=cfg.augment)
        else:
            step_cfg = StepConfig(cfg.loss, cfg.optim.encoder_frozen, cfg.optim.freeze_projector, augment=cfg.augment)
        quantized_base = bool(lora) and cfg.lora.base_dtype == "int8"
        module = build_module(
            config,
            dtype=jnp.dtype(cfg.train.compute_dtype),
            remat_policy=cfg.train.remat,
            inference_scaling=False,
            quantized=quantized_base,
            lora=lora,
        )
        if lora:  # the trained tree is the adapters; the frozen base keeps its own (int8 with QLoRA) shardings
            base_shardings, param_shardings = split_adapters(placement.param_shardings(config, quantized_base, lora))
        else:
            base_shardings, param_shardings = None, placement.param_shardings(config)
        return cls(
            cfg=cfg,
            out=out,
            placement=placement,
            config=config,
            processor=processor,
            preference=preference,
            examples=examples,
            report=report,
            fingerprint=fingerprint,
            completion_suffix=suffix,
            local_pairs=local,
            padded_pairs=padded,
            module=module,
            tx=tx,
            lr_fn=lr_fn,
            step_cfg=step_cfg,
            param_shardings=param_shardings,
            lora=lora,
            base_shardings=base_shardings,
        )

    # ---- params and state ----------------------------------------------------------------------------------
    def load_params(self, model_dir, dtype=jnp.float32) -> dict:
        """Every weight of a model dir in `dtype` (fp32 master weights by default, whatever the stored dtype),
        restored straight into their shardings."""
        target = jax.tree_util.tree_map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, dtype, sharding=s),
            abstract_params(self.config),
            self.placement.param_shardings(self.config),
        )
        return load_params(model_dir, target)

    def load_base(self) -> dict:
        """LoRA's frozen base: the model in lora.base_dtype (int8: bf16 loaded, then quantized on the devices as
        `--quantize int8` does, model/quant.py)."""
        base_dtype = self.cfg.lora.base_dtype
        params = self.load_params(self.cfg.model, jnp.float32 if base_dtype == "float32" else jnp.bfloat16)
        if base_dtype == "int8":
            params = jax.jit(quantize_params, out_shardings=self.base_shardings, donate_argnums=0)(params)
        return params

    def _initial_params(self) -> dict:
        if self.lora is None:
            return self.load_params(self.cfg.model)
        _, abstract = split_adapters(abstract_params(self.config, lora=self.lora))
        key = jax.random.fold_in(jax.random.PRNGKey(self.cfg.train.seed), 1)  # not the step rng's stream
        return jax.jit(lambda k: init_adapters(abstract, k), out_shardings=self.param_shardings)(key)

    def initial_state(self) -> TrainState:
        params = self._initial_params()
        opt_state = jax.jit(self.tx.init)(params)
        state = TrainState(
            step=jnp.asarray(0, jnp.int32),
            params=params,
            opt_state=opt_state,
            rng=jax.random.PRNGKey(self.cfg.train.seed),
        )
        # Every leaf committed to the mesh (params and moments by their shardings, scalars replicated), as the
        # step's outputs will be, so step 2 reuses step 1's program and every donation lands.
        rep = self.placement.replicated()
        shardings = jax.tree_util.tree_map(
            lambda x: x.sharding if isinstance(x.sharding, jax.sharding.NamedSharding) else rep, state
        )
        return jax.device_put(state, shardings)

    def iterator(self, total_steps: int):
        cfg = self.cfg
        pipeline = PipelineConfig(
            self.local_pairs, cfg.train.grad_accum, cfg.train.seed, cfg.train.num_threads, self.completion_suffix
        )
        return make_iterator(
            self.examples,
            self.processor,
            pipeline,
            total_steps,
            preference=self.preference,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    # ---- batches and steps -----------------------------------------------------------------------------------
    def next_batch(self, it, ref_table: dict | None) -> tuple[TrainBatch, int]:
        """The next step's micro-batches as a device batch (every process agrees on the bucketed shapes)."""
        micro = [next(it) for _ in range(self.cfg.train.grad_accum)]
        shape = self.batch.agree(batch_shape(micro, Buckets()))
        self.shapes_seen.add(shape)
        arrays = collate_step(
            micro, shape, self.config.pad_token_id, self.processor.n_mels, ref_table, preference=self.preference
        )
        arrays = pad_pairs(arrays, self.padded_pairs, self.config.pad_token_id)
        # Every process contributes its slice of pairs (and their clips); concatenating both in process order
        # keeps rows and clips aligned, as the audio merge needs, whatever the mesh's device order.
        return TrainBatch(**self.batch.place(arrays, PAIR_AXIS, CLIP_AXIS)), shape.completion

    @property
    def batch(self) -> DeviceBatch:
        return DeviceBatch(self.placement)

    def step_fn(self, completion: int, state: TrainState):
        """The jitted step for one completion-length bucket (a static shape of the lm_head pass)."""
        if completion not in self.steps:
            step_cfg = dataclasses.replace(self.step_cfg, max_completion=completion)
            step = functools.partial(train_step, self.module, self.tx, self.lr_fn, step_cfg)
            state_sh = jax.tree_util.tree_map(lambda x: x.sharding, state)
            rep = self.placement.replicated()
            self.steps[completion] = jax.jit(step, out_shardings=(state_sh, rep), donate_argnums=(0,))
        return self.steps[completion]

    def compiled_programs(self) -> int:
        """Train-step programs compiled so far (one per batch-shape bucket seen)."""
        return sum(f._cache_size() for f in self.steps.values())


def _output_dir(cfg: RunConfig) -> Path:
    """output_dir, checked before anything else runs (one line if it cannot be used): not the same as, inside
    or a parent of the model, the reference model or the data (training writes OUTPUT/model at the end, so a
    foreign OUTPUT/model is refused too); a directory, writable, and used by no other run (process 0 holds its
    lock until the run ends). It is marked as the tool's only when created here or found empty."""
    from qwen_audio_jax.checkpoint.safe_write import check_sources, is_ours, prepare_work_dir

    sources = {"model": cfg.model, "reference model": cfg.reference.model, "training data": cfg.data.train}
    out = check_sources(cfg.output_dir, sources, "output_dir")
    final = out / "model"
    if final.exists() and not (final.is_dir() and (is_ours(final) or not any(final.iterdir()))):
        raise OutputError(
            f"output_dir {out} holds a model/ that qwen-audio-jax did not write, and training writes its final "
            "model there; choose another output_dir."
        )
    return prepare_work_dir(out, what="output_dir", kind="training", sources=sources, lock=jax.process_index() == 0)
