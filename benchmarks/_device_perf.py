"""Device suite, part 2: a 7B-shaped random-weight model in bf16 and int8 through the engine's own programs:
decode step time against the HBM roofline, prefill tokens/s and MFU, audio-encoder clips/s, and a DPO train
step's MFU on a reduced-depth 7B."""

from __future__ import annotations

import dataclasses

import numpy as np
from _device_common import H200_BF16_TFLOPS, decoder_param_count, leaf_bytes, median_time, random_params


def model_config(smoke: bool):
    from qwen_audio_jax.config import qwen2_audio_7b, tiny

    return tiny(num_kv_heads=4) if smoke else qwen2_audio_7b()


def _live_state(engine, context: int, seed: int):
    """Every slot live at `context` tokens over its own pages, the pool filled with random values (timing on
    zeros would flatter the matmuls)."""
    import jax
    import jax.numpy as jnp

    g = engine.geometry
    per_slot = g.pages_for(context + 64)

    def make(state):
        b = state.done.shape[0]
        table = 1 + jnp.arange(b)[:, None] * per_slot + jnp.arange(state.table.shape[1])[None, :]
        table = jnp.where(jnp.arange(state.table.shape[1])[None, :] < per_slot, table, 0)
        key = jax.random.PRNGKey(seed)
        pool = state.pool
        if pool.quantized:
            pool = pool.replace(
                k=jax.random.randint(key, pool.k.shape, -127, 128, jnp.int8),
                v=jax.random.randint(key, pool.v.shape, -127, 128, jnp.int8),
                k_scale=jnp.full(pool.k_scale.shape, 0.01, jnp.float32),
                v_scale=jnp.full(pool.v_scale.shape, 0.01, jnp.float32),
            )
        else:
            pool = pool.replace(
                k=jax.random.normal(key, pool.k.shape, pool.k.dtype),
                v=jax.random.normal(key, pool.v.shape, pool.v.dtype),
            )
        return state.replace(
            pool=pool,
            table=table.astype(jnp.int32),
            lengths=jnp.full((b,), context, jnp.int32),
            last_token=jax.random.randint(key, (b,), 0, 150000, jnp.int32),
            done=jnp.zeros((b,), bool),
            max_new=jnp.full((b,), 1 << 30, jnp.int32),
        )

    state, features = engine.programs.init()
    return jax.jit(make, donate_argnums=0)(state), features


def _never_stop(engine) -> None:
    import jax.numpy as jnp

    from qwen_audio_jax.generation.steps import StopCriteria

    engine.programs.stop = StopCriteria(jnp.full((8,), -1, jnp.int32), jnp.asarray(0, jnp.int32))


def section_decode(suite, params_by_mode: dict, config, batches: dict, context: int) -> None:
    """Decode step time per batch size against the roofline: the bytes one step must read (decoder weights and
    lm_head once, each live slot's keys/values) over the measured copy bandwidth."""
    import jax
    import jax.numpy as jnp

    from qwen_audio_jax.generation.engine import Engine

    chunk = 32 if not suite.smoke else 4
    for mode, (params, quantized, kv) in params_by_mode.items():
        for b in batches.get(mode, ()):
            if suite.left() < 45:
                suite.emit("decode", mode=mode, batch=b, skipped="out of time")
                continue
            engine = Engine(
                config, params, dtype=jnp.bfloat16, batch_size=b, max_len=context + 64,
                kv_cache_tokens=b * -(-(context + 64) // 128) * 128, quantized=quantized, kv_cache_dtype=kv,
            )  # fmt: skip
            _never_stop(engine)
            state, _ = _live_state(engine, context, seed=b)
            box = {"state": state}

            def step(engine=engine, box=box):
                box["state"], tokens, _, n = engine.programs.decode(box["state"], jnp.asarray(False), chunk)
                jax.block_until_ready(tokens)
                box["n"] = int(n)

            s = median_time(step, reps=3 if not suite.smoke else 1)
            per_step = s / max(box["n"], 1)
            weights = leaf_bytes(engine.params["language_model"]["layers"]) + leaf_bytes(engine.params["lm_head"])
            kv_bytes = engine.kv_cache_bytes / (engine.geometry.pages * engine.geometry.page_size) * b * context
            floor = (weights + kv_bytes) / suite.bandwidth
            suite.emit(
                "decode", mode=mode, batch=b, context=context, step_ms=round(per_step * 1e3, 3),
                tokens_per_s=round(b / per_step, 1), roofline_ms=round(floor * 1e3, 3),
                of_roofline=round(floor / per_step, 3), bytes_per_step_gb=round((weights + kv_bytes) / 1e9, 3),
            )  # fmt: skip
            engine = state = box = None  # the pool goes before the next batch size's
            jax.clear_caches()


def section_prefill(suite, params_by_mode: dict, config, lengths) -> None:
    """A text prompt of T tokens through the engine's prefill (first chunk) and extend (later chunks) programs:
    tokens/s and MFU (decoder matmuls 2 * P * T plus causal attention 2 * L * T^2 * N * H)."""
    import jax
    import jax.numpy as jnp

    from qwen_audio_jax.generation import layout
    from qwen_audio_jax.generation.engine import Engine
    from qwen_audio_jax.generation.scheduler import Admitted, ChunkPlan

    d = config.decoder
    for mode, (params, quantized, _kv) in params_by_mode.items():
        engine = Engine(
            config, params, dtype=jnp.bfloat16, batch_size=1, max_len=max(lengths) + 16, quantized=quantized
        )
        chunk = engine.buckets.chunks[-1]
        for t in lengths:
            if suite.left() < 40:
                suite.emit("prefill", mode=mode, tokens=t, skipped="out of time")
                continue
            from qwen_audio_jax.generation.engine import EngineRequest
            from qwen_audio_jax.generation.options import GenerationOptions
            from qwen_audio_jax.text.processor import PreparedRequest

            ids = [int(x) for x in np.random.default_rng(t).integers(100, 50000, size=t)]
            req = EngineRequest(0, PreparedRequest(ids), GenerationOptions(max_new_tokens=1).for_request(None, "p"))
            adm = Admitted(req, 0, 0, list(range(1, engine.geometry.pages_for(t + 1) + 1)))
            box = {"state": None, "features": None}

            def run(engine=engine, box=box, adm=adm, t=t, chunk=chunk):
                if box["state"] is None:
                    box["state"], box["features"] = engine.programs.init()
                for start in range(0, t, chunk):
                    n = min(chunk, t - start)
                    plan = ChunkPlan(adm, start, n, start + n == t, 0)
                    size = chunk if start else engine.buckets.chunk_length(n)
                    rows = layout.prefill_arrays({0: plan}, size, config, engine.geometry, [0])
                    placed = engine.batch.place(rows)
                    box["state"], pre = engine.programs.prefill(box["state"], box["features"], placed, start > 0)
                jax.block_until_ready(pre.first_token)

            s = median_time(run, reps=3 if not suite.smoke else 1)
            flops = 2 * decoder_param_count(engine.params) * t + 2 * d.num_layers * t * t * d.num_heads * d.head_dim
            suite.emit(
                "prefill", mode=mode, tokens=t, seconds=round(s, 4), tokens_per_s=round(t / s),
                mfu=round(flops / s / (H200_BF16_TFLOPS * 1e12), 3),
                of_measured_matmul=round(flops / s / suite.matmul_flops, 3),
            )  # fmt: skip
        engine = None
        jax.clear_caches()


def section_encoder(suite, params, config) -> None:
    """One 30 s clip per call (3000 frames), as the engine encodes clips: clips/s and MFU."""
    import jax
    import jax.numpy as jnp

    from qwen_audio_jax.generation.engine import Engine

    engine = Engine(config, params, dtype=jnp.bfloat16, batch_size=1, max_len=2048)
    features = engine.programs.init()[1]
    mel = jax.device_put(
        np.random.default_rng(0).standard_normal((1, config.audio.num_mel_bins, 3000)).astype(np.float32)
    )
    length, offset = jnp.asarray([3000], jnp.int32), jnp.asarray([0], jnp.int32)
    box = {"f": features}

    def run():
        box["f"] = engine.programs.encode(box["f"], mel, length, offset)
        box["f"].block_until_ready()

    s = median_time(run, reps=5 if not suite.smoke else 1)
    a = config.audio
    p = sum(int(x.size) for x in jax.tree_util.tree_leaves(engine.params["audio_tower"]["layers"]))
    flops = 2 * p * 1500 + 4 * a.num_layers * 1500 * 1500 * a.d_model
    suite.emit("encoder", clip_s=30, seconds_per_clip=round(s, 5), clips_per_s=round(1 / s, 1),
               mfu=round(flops / s / (H200_BF16_TFLOPS * 1e12), 3))  # fmt: skip


def section_dpo(suite, smoke: bool) -> None:
    """One DPO train step (policy forward + backward, frozen-reference forward, AdamW on fp32 masters, bf16
    compute, encoder frozen) on a reduced-depth 7B: 7B widths and vocab, 4 decoder and 4 encoder layers."""
    import jax
    import jax.numpy as jnp

    from qwen_audio_jax.config import AudioEncoderConfig
    from qwen_audio_jax.model.params import build_module, init_params
    from qwen_audio_jax.training.loss import LossConfig
    from qwen_audio_jax.training.optimizer import OptimConfig, make_optimizer
    from qwen_audio_jax.training.step import StepConfig, TrainBatch, TrainState, train_step

    base = model_config(smoke)
    layers = 4 if not smoke else 1
    config = dataclasses.replace(
        base,
        decoder=dataclasses.replace(base.decoder, num_layers=layers),
        audio=dataclasses.replace(base.audio, num_layers=layers) if not smoke else AudioEncoderConfig(
            d_model=64, num_layers=1, num_heads=4, ffn_dim=128),
    )  # fmt: skip
    pairs, t, completion = (4, 1024, 256) if not smoke else (1, 64, 16)
    params = init_params(config, jax.random.PRNGKey(0))
    tx, lr_fn = make_optimizer(OptimConfig(), 100, config.audio.num_layers)
    module = build_module(config, dtype=jnp.bfloat16, inference_scaling=False)
    cfg = StepConfig(LossConfig(), max_completion=completion)
    state = TrainState(jnp.asarray(0, jnp.int32), params, jax.jit(tx.init)(params), jax.random.PRNGKey(1))
    rng = np.random.default_rng(0)
    tokens = rng.integers(100, 50000, size=(1, 2, pairs, t)).astype(np.int32)
    comp = np.zeros((1, 2, pairs, t), np.int32)
    comp[..., t - completion :] = 1
    batch = TrainBatch(
        tokens=jnp.asarray(tokens), mask=jnp.ones_like(jnp.asarray(tokens)), completion_mask=jnp.asarray(comp),
        pair_active=jnp.ones((1, pairs), jnp.float32),
    )  # fmt: skip
    step = jax.jit(lambda s, b: train_step(module, tx, lr_fn, cfg, s, b, s.params), donate_argnums=0)
    box = {"state": state}

    def run():
        box["state"], metrics = step(box["state"], batch)
        jax.block_until_ready(metrics)

    s = median_time(run, reps=3 if not smoke else 1)
    p = decoder_param_count(params)
    rows = 2 * pairs
    # policy forward + backward (3 x forward), reference forward: 8 * P per token; lm_head on completion tokens.
    flops = 8 * p * rows * t + 8 * config.decoder.vocab_size * config.decoder.hidden_size * rows * completion
    suite.emit("dpo_step", layers=layers, pairs=pairs, tokens_per_row=t, seconds=round(s, 4),
               tokens_per_s=round(rows * t / s), mfu=round(flops / s / (H200_BF16_TFLOPS * 1e12), 3))  # fmt: skip


def build_7b(suite):
    """bf16 random params of the 7B shape and their int8 version, {mode: (params, quantized, kv dtype)}."""
    import jax
    import jax.numpy as jnp

    from qwen_audio_jax.model.quant import quantize_params

    config = model_config(suite.smoke)
    bf16 = random_params(config, jnp.bfloat16)
    int8 = jax.jit(quantize_params)(bf16)
    return config, {
        "bf16": (bf16, False, "auto"),
        "int8_weights": (int8, True, "auto"),
        "int8_weights_int8_kv": (int8, True, "int8"),
    }
