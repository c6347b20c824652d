"""Per-device memory plan for a model on a mesh: weights, optimizer state, gradients, KV cache, activations.

Nothing is allocated and no device is needed: param shapes come from `abstract_params` (jax.eval_shape) and
each param's sharding from `spec_for` on a shape-only mesh, so a plan for a 256-chip pod runs on a laptop.

What is counted, per device (c = compute-dtype bytes, p = param-dtype bytes; "/shards" = divided by the
product of the mesh axes the param's PartitionSpec uses, which is exact because `spec_for` splits only dims
that divide):
  weights      sum over params of size * p / shards (inference loads params in the compute dtype, so p = c
               there unless --param-dtype says otherwise; training keeps fp32 params by default).
  optimizer    training only, AdamW over the TRAINABLE params: 2 fp32 moments (mu, nu) = 8 bytes each,
               plus a 4-byte fp32 master copy when the params themselves are bf16; / shards (optax state
               mirrors the param tree, so it gets the params' shardings). The step count is ignored.
               Trainable follows the param groups of model/params.py: the decoder and lm_head always, the
               projector unless frozen, `audio_tower/*` only when the encoder is not frozen (default: frozen),
               and never `audio_tower/embed_positions` (the reference never trains it).
  gradients    training only: size * p / shards for the trainable params (gradients have the params' dtype);
               with grad_accum > 1 also the trainer's accumulator, zeros_like(params): every param, frozen
               ones included (training/step.py).
  reference    DPO with reference.mode "model": a frozen fp32 copy of the policy, sharded like it (the
               trainer loads it with the policy's shardings). "precomputed" (the 7B config) holds none.
  kv_cache     inference only: the paged pool holding B sequences of S = max_len tokens at once (the engine's
               --kv-cache-tokens B * S): k and v of every layer in the compute dtype, or with kv_cache_dtype
               "int8" one byte per element plus an fp32 scale per token and head; sharded as the engine does:
               B padded up to and split over the batch axes (data, fsdp), K over tensor when it divides.
  (quantize "int8", inference: the decoder's linear kernels and the lm_head count one byte per weight plus an
               fp32 scale per output channel, model/quant.py; everything else stays in the compute dtype.)
  activations  an ESTIMATE of the peak working set (formulas in sharding/activations.py;
               rows = sequences per device, T = tokens per sequence):
               inference: max(prefill of one decoder layer at T = prompt_len (residual 2*rows*T*D*c, then
                 max(attention: q/k/v/out + [rows, N, T, T] fp32 scores, an fp32 softmax temporary and the
                 probs in c; MLP: 3 [rows, T, F])) + the [rows, T, T] bool mask; one decode step; the audio
                 encoder's forward over one 30 s clip per row) + last-position fp32 logits [rows, V].
               training: L * (per-layer saved activations for the remat policy) + the larger of one layer's
                 backward (its full set recomputed, fp32 d-probs/d-scores, its weight gradient) and the
                 head's (final hidden + gradient, 3 fp32 logits chunks [rows, 128, V] from
                 model/logprobs.py, lm_head's gradient accumulator) + the mask; a frozen encoder only runs
                 forward (its peak is taken by max), a trained one saves its layers too.
               Attention here materialises fp32 scores (model/layers.py), so long prompts dominate.
               Checked against XLA's memory_analysis of a 4-layer, 7B-width grad step compiled for CPU in
               fp32 (T = 512, 2048; remat none/dots/full): within ~10%. Inference prefill read ~20% low there.
  gathered     an ESTIMATE of transient all-gathered weights under fsdp > 1 (ZeRO-3 gathers each layer
               before use): max over units (one decoder layer, one encoder layer, lm_head) of the gathered
               size, x2 for layers (in use + prefetched), x1 more in training for the layer's unreduced
               gradient. Zero when nothing is fsdp-sharded.
Not counted: XLA's scratch and fragmentation, program code, host-side buffers, and the DPO reference's
activations (its forward runs outside the gradient, before the policy's, so it never adds to the backward's
peak; its weights are counted above). That is what the margin in `fits` is for.
Batch means sequences per step: for DPO count chosen and rejected (2 x pairs).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.errors import ConfigError
from qwen_audio_jax.model import axes
from qwen_audio_jax.model.remat import REMAT_POLICIES
from qwen_audio_jax.sharding.activations import activations
from qwen_audio_jax.sharding.param_shards import ParamShard, ShapeMesh, param_shards, spec_axes
from qwen_audio_jax.sharding.plan_lora import BASE_BYTES, LoraPlan, adapter_shards
from qwen_audio_jax.sharding.rules import LOGICAL_RULES, MESH_AXES, Rules

# jax and flax are imported only inside the functions that read shapes (the tables and formulas are plain
# Python), so `qwen-audio-jax plan --help` and its usage errors answer at once.

KIB, MIB, GIB = 1024, 1024**2, 1024**3
DTYPE_BYTES = {"bfloat16": 2, "float32": 4}

DEFAULT_MARGIN = 0.9  # fraction of device memory a plan may use: the rest is XLA scratch and fragmentation

# HBM per chip in GiB (vendor figures, rounded: an H100 reports 81,559 MiB = 79.6 GiB, so plans near the
# limit should leave the margin alone). JAX on GPUs preallocates only 75% by default; set
# XLA_PYTHON_CLIENT_MEM_FRACTION=.95 to use what the margin assumes.
DEVICE_MEMORY_GIB = {
    "tpu-v5e": 16,
    "tpu-v5p": 95,
    "tpu-v6e": 32,
    "h100": 80,
    "h200": 141,
    "a100-40g": 40,
    "a100-80g": 80,
}


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device, by category (see the module docstring for exactly what each counts)."""

    model: str
    mesh: dict[str, int]
    train: bool
    batch: int  # requested sequences per step
    padded_batch: int  # rounded up to a multiple of the batch axes (as the engine does)
    rows_per_device: int
    max_len: int  # cache length S (inference) / sequence length T (training)
    prompt_len: int  # prefill length (inference)
    param_dtype: str
    compute_dtype: str
    remat: str
    freeze_audio_encoder: bool  # training only (False for inference: nothing is trained)
    freeze_projector: bool
    grad_accum: int
    total_params: int
    trainable_params: int
    quantize: str  # inference weights: "none" | "int8"
    kv_cache_dtype: str  # "auto" | "int8"
    lora_rank: int  # training: LoRA adapters' rank over a frozen base (0: every weight trains)
    weights: int
    optimizer: int
    gradients: int
    reference_weights: int
    kv_cache: int
    activations: int
    gathered_weights: int

    @property
    def total(self) -> int:
        return sum(getattr(self, field) for field, _ in CATEGORIES)

    @property
    def num_devices(self) -> int:
        return math.prod(self.mesh.values())


CATEGORIES = (
    ("weights", "weights"),
    ("optimizer", "optimizer state"),
    ("gradients", "gradients"),
    ("reference_weights", "DPO reference model"),
    ("kv_cache", "KV cache"),
    ("activations", "activations (est.)"),
    ("gathered_weights", "fsdp gathers (est.)"),
)


# ---- inputs ----------------------------------------------------------------------------------------------
def device_bytes(name: str) -> int:
    if name not in DEVICE_MEMORY_GIB:
        known = ", ".join(DEVICE_MEMORY_GIB)
        raise ConfigError(f"unknown device {name!r}; choose one of {known} or pass --device-memory.")
    return DEVICE_MEMORY_GIB[name] * GIB


def _dtype_bytes(name: str) -> int:
    if name not in DTYPE_BYTES:
        raise ConfigError(f"unsupported dtype {name!r}; choose one of {sorted(DTYPE_BYTES)}.")
    return DTYPE_BYTES[name]


def _per_device(shards: list[ParamShard], bytes_per_elem: int) -> int:
    return sum(s.size * bytes_per_elem // s.shards for s in shards)


def _weights(shards: list[ParamShard], p: int, int8: bool) -> int:
    """Weights per device; `int8`: quantized kernels at one byte plus an fp32 scale per output channel."""
    if not int8:
        return _per_device(shards, p)
    from qwen_audio_jax.model.quant import is_quantized_kernel

    total = 0
    for s in shards:
        if is_quantized_kernel(tuple(s.path.split("/"))):
            total += (s.size + s.size // s.shape[-2] * 4) // s.shards  # int8 values + scales [..., out]
        else:
            total += s.size * p // s.shards
    return total


def _gathered(shards: list[ParamShard], p: int, train: bool, cfg: ModelConfig) -> int:
    """Largest transient all-gather over fsdp (see module docstring): the gathered size is what the device
    holds once the fsdp split is undone (the tensor split stays)."""

    def size(prefix: str, per: int = 1) -> tuple[int, bool]:
        sel = [s for s in shards if s.path.startswith(prefix) and s.fsdp_shards > 1]
        return sum(s.size * p * s.fsdp_shards // s.shards for s in sel) // per, any(s.trainable for s in sel)

    units = [
        (*size("language_model/layers/", cfg.decoder.num_layers), 2),
        (*size("audio_tower/layers/", cfg.audio.num_layers), 2),
        (*size("lm_head/"), 1),
    ]
    return max(n * (k + (1 if train and trainable else 0)) for n, trainable, k in units)


# ---- the plan --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PlanRequest:
    """What to plan. batch: sequences in memory at once (one micro-batch; DPO: chosen + rejected); max_len:
    tokens per sequence (the KV cache length for inference); prompt_len: the inference prefill length
    (default max_len); param_dtype: default the compute dtype for inference (params are cast on load) and
    float32 for training (fp32 master weights); training only: freeze_*, grad_accum (micro-batches per step),
    reference ("model": DPO with a reference copy in memory; "none"/"precomputed": none), remat (a policy of
    model/remat.py; "dots_no_batch" is counted as "dots")."""

    mesh: Mapping[str, int]
    batch: int
    max_len: int
    train: bool = False
    prompt_len: int | None = None
    param_dtype: str | None = None
    compute_dtype: str = "bfloat16"
    freeze_audio_encoder: bool = True
    freeze_projector: bool = False
    grad_accum: int = 1
    reference: str = "none"
    remat: str = "none"
    model_name: str = "model"
    quantize: str = "none"  # inference: "int8" weight-only decoder kernels and lm_head
    kv_cache_dtype: str = "auto"  # inference: "int8" KV pages with per-token, per-head scales
    lora: LoraPlan = LoraPlan()  # training: LoRA / QLoRA (sharding/plan_lora.py)

    def __post_init__(self):
        if self.quantize not in ("none", "int8") or self.kv_cache_dtype not in ("auto", "int8"):
            raise ConfigError(
                f"quantize ({self.quantize!r}) must be none or int8 and kv_cache_dtype ({self.kv_cache_dtype!r}) "
                "auto or int8."
            )
        if set(self.mesh) - set(MESH_AXES) or min(self.mesh.values(), default=1) < 1:
            raise ConfigError(f"bad mesh {dict(self.mesh)}: axes are {', '.join(MESH_AXES)}, sizes >= 1.")
        if self.batch < 1 or self.max_len < 1:
            raise ConfigError(f"batch ({self.batch}) and max_len ({self.max_len}) must be positive.")
        if self.prompt_len is not None and not 1 <= self.prompt_len <= self.max_len:
            raise ConfigError(f"prompt_len ({self.prompt_len}) must be between 1 and max_len ({self.max_len}).")
        if self.grad_accum < 1:
            raise ConfigError(f"grad_accum ({self.grad_accum}) must be >= 1.")
        if self.reference not in ("none", "precomputed", "model"):
            raise ConfigError(f"reference {self.reference!r} must be one of none, precomputed, model.")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"unknown remat policy {self.remat!r}; choose one of {', '.join(REMAT_POLICIES)}.")
        _dtype_bytes(self.compute_dtype)
        if self.param_dtype is not None:
            _dtype_bytes(self.param_dtype)


def plan(config: ModelConfig, request: PlanRequest, rules: Rules = LOGICAL_RULES) -> MemoryPlan:
    """Per-device bytes for `request` on a mesh of `request.mesh` ({axis: size}, missing axes 1)."""
    r = request
    mesh = {name: int(r.mesh.get(name, 1)) for name in MESH_AXES}
    train = r.train
    prompt_len = r.max_len if r.prompt_len is None else r.prompt_len
    param_dtype = r.param_dtype or ("float32" if train else r.compute_dtype)
    p, c = _dtype_bytes(param_dtype), _dtype_bytes(r.compute_dtype)
    frozen = train and r.freeze_audio_encoder
    remat = "dots" if r.remat == "dots_no_batch" else r.remat

    shards = param_shards(
        config, mesh, rules, freeze_audio_encoder=frozen, freeze_projector=train and r.freeze_projector
    )
    trainable = [s for s in shards if s.trainable] if train else []

    # Batch axes as the engine uses them (mesh.batch_axes): the BATCH rule's axes of size > 1; the batch is
    # padded up to their product, never refused.
    target = dict(rules)[axes.BATCH]
    batch_mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
    divisor = math.prod(mesh[a] for a in batch_mesh_axes)
    padded = -(-r.batch // divisor) * divisor
    rows = padded // divisor

    kv = 0
    if not train:
        from qwen_audio_jax.sharding.mesh import spec_for

        d = config.decoder
        shape = (d.num_layers, padded, d.num_kv_heads, r.max_len, d.head_dim)  # [L, B, K, S, H]
        spec = spec_for(axes.CACHE_AXES, shape, ShapeMesh(mesh), rules)
        per_head = d.head_dim + 4 if r.kv_cache_dtype == "int8" else d.head_dim * c  # int8: + its fp32 scale
        kv = 2 * math.prod(shape[:-1]) * per_head // math.prod(mesh[a] for a in spec_axes(spec))

    weights = _weights(shards, p, r.quantize == "int8" and not train)
    optimizer = _per_device(trainable, 8 + (4 if p < 4 else 0))  # mu + nu fp32 (+ fp32 master if bf16)
    gradients = _per_device(trainable, p) + (_per_device(shards, p) if train and r.grad_accum > 1 else 0)
    reference = _per_device(shards, p) if train and r.reference == "model" else 0
    lora = train and r.lora.enabled
    if lora:  # adapters train over a frozen base held once (sharding/plan_lora.py)
        param_dtype, p = r.lora.base_dtype, BASE_BYTES[r.lora.base_dtype]
        trainable = adapter_shards(config, mesh, rules, r.lora)
        shards = [dataclasses.replace(s, trainable=False) for s in shards]
        frozen = not r.lora.audio_encoder
        weights = _weights(shards, p, r.lora.base_dtype == "int8") + _per_device(trainable, 4)
        optimizer, reference = _per_device(trainable, 8), 0
        gradients = _per_device(trainable, 4) * (2 if r.grad_accum > 1 else 1)
    layer_grad = _per_device([s for s in trainable if s.path.startswith("language_model/layers/")], 4 if lora else p)
    return MemoryPlan(
        model=r.model_name,
        mesh=mesh,
        train=train,
        batch=r.batch,
        padded_batch=padded,
        rows_per_device=rows,
        max_len=r.max_len,
        prompt_len=prompt_len,
        param_dtype=param_dtype,
        compute_dtype=r.compute_dtype,
        remat=r.remat,
        freeze_audio_encoder=frozen,
        freeze_projector=train and r.freeze_projector,
        grad_accum=r.grad_accum if train else 1,
        total_params=sum(s.size for s in shards),
        quantize=r.quantize if not train else "none",
        kv_cache_dtype=r.kv_cache_dtype if not train else "auto",
        lora_rank=r.lora.rank if lora else 0,
        trainable_params=sum(s.size for s in trainable),
        weights=weights,
        optimizer=optimizer,
        gradients=gradients,
        reference_weights=reference,
        kv_cache=kv,
        activations=activations(
            config,
            mesh,
            rows,
            r.max_len,
            prompt_len,
            train,
            remat,
            frozen,
            c,
            layer_grad=layer_grad // config.decoder.num_layers,
            head_grad=_per_device([s for s in trainable if s.path.startswith("lm_head/")], p),
        ),
        gathered_weights=_gathered(shards, p, train, config) if mesh["fsdp"] > 1 else 0,
    )


def fits(plan: MemoryPlan, device_bytes: int, margin: float = DEFAULT_MARGIN) -> bool:
    """True when the plan's total is at most `margin` x the device's memory."""
    return plan.total <= margin * device_bytes
