"""The engine's compiled programs: one jitted function per family, explicit output shardings (one layout of the
slot state across prefill and decode, so every donation lands), and the set's bound.

    init                  1   the slot state (page pool included) and the audio feature buffer
    encode[frames]        |buckets.frames|   one clip per page domain, at a mel-frame bucket
    prefill[chunk]        |buckets.chunks|   a prompt's first chunk, at a chunk-length bucket
    extend                1   later chunks of long prompts (the largest chunk length)
    decode                1   up to DECODE_CHUNK steps of every slot

Nothing in the set depends on the corpus: clip lengths, prompt lengths, budgets and clip counts only choose
among these shapes. `precompile` runs each once on inputs that change nothing (padding rows and clips aimed
at the null page and the scratch rows), so a long job never stalls to compile mid-run.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from tqdm import tqdm

from qwen_audio_jax.generation import layout, steps
from qwen_audio_jax.generation.scheduler import CacheGeometry
from qwen_audio_jax.model.paged import bytes_per_token
from qwen_audio_jax.sharding.placement import Placement


class ProgramSet:
    def __init__(
        self, module, params, placement: Placement, config, geometry: CacheGeometry, dtype, kv_int8, buckets, stop
    ):
        self.params, self.placement, self.config, self.geometry = params, placement, config, geometry
        self.buckets, self.stop, self.dtype, self.kv_int8 = buckets, stop, dtype, kv_int8
        state_sh = layout.state_shardings(placement, config, geometry, kv_int8)
        rep = placement.replicated()
        rows1, rows2 = placement.batch_sharding(1), placement.batch_sharding(2)
        feature_shape = (geometry.domains * geometry.feature_rows, config.decoder.hidden_size)
        init = functools.partial(
            _init,
            config.decoder.vocab_size,
            geometry.slots,
            geometry.max_pages,
            layout.pool_shape(config, geometry),
            dtype,
            kv_int8,
            feature_shape,
        )
        self._init = jax.jit(init, out_shardings=(state_sh, rep))
        self._encode = jax.jit(functools.partial(steps.encode, module), donate_argnums=(1,), out_shardings=rep)
        rows3 = placement.batch_sharding(3)
        prefill_out = (state_sh, steps.Prefilled(rows1, rows1, rows1, rows2, rows2))
        self._prefill = jax.jit(
            functools.partial(steps.prefill, module.clone(cache_mode="prefill")),
            donate_argnums=(1,),
            out_shardings=prefill_out,
        )
        self._extend = jax.jit(
            functools.partial(steps.prefill, module.clone(cache_mode="extend")),
            donate_argnums=(1,),
            out_shardings=prefill_out,
        )
        self._decode = jax.jit(
            functools.partial(steps.decode, module.clone(cache_mode="extend")),
            static_argnames=("chunk",),
            donate_argnums=(1,),
            out_shardings=(state_sh, rows2, steps.StepLogprobs(rows2, rows3, rows3), rep),
        )

    # ---- calls ---------------------------------------------------------------------------------------------
    def init(self):
        return self._init()

    def encode(self, features, mel, mel_lengths, offsets):
        return self._encode(self.params, features, mel, mel_lengths, offsets)

    def prefill(self, state, features, rows, extend: bool, want_top: bool = False):
        """want_top: also the first tokens' top log-probs (a traced flag: the same program)."""
        fn = self._extend if extend else self._prefill
        return fn(self.params, state, features, rows, self.stop, jnp.asarray(want_top))

    def decode(self, state, stop_on_free, chunk: int, cancel=None, want_top: bool = False):
        """cancel: [B] bool, slots to stop before the first step (None: none); want_top: each step's top
        log-probs too (a traced flag: the same program)."""
        cancel = self._no_cancel() if cancel is None else cancel
        return self._decode(
            self.params, state, self.stop, stop_on_free, chunk=chunk, cancel_B=cancel, want_top=jnp.asarray(want_top)
        )

    def lower_decode(self, state, chunk: int):
        """The decode program lowered for `state` (its compiled HLO is what tests and the device suite inspect)."""
        true = jnp.asarray(True)
        return self._decode.lower(
            self.params, state, self.stop, true, chunk=chunk, cancel_B=self._no_cancel(), want_top=jnp.asarray(False)
        )

    def _no_cancel(self):
        return jnp.zeros((self.geometry.slots,), bool)

    # ---- the set -------------------------------------------------------------------------------------------
    def compiled(self) -> dict[str, int]:
        fns = {"init": self._init, "encode": self._encode, "prefill": self._prefill, "extend": self._extend}
        return {name: fn._cache_size() for name, fn in {**fns, "decode": self._decode}.items()}

    def bound(self) -> int:
        return 1 + len(self.buckets.inference_frames) + len(self.buckets.chunks) + 1 + 1

    def kv_cache_bytes(self) -> int:
        d = self.config.decoder
        per_token = bytes_per_token(
            d.num_layers, d.num_kv_heads, d.head_dim, jnp.dtype(self.dtype).itemsize, self.kv_int8
        )
        g = self.geometry
        return per_token * g.domains * g.pages * g.page_size

    def precompile(self, progress: bool = True, chunk: int = 32):
        """Compiles (and runs once, harmlessly) every program of the set. Returns (programs in the set, the
        fresh slot state, the feature buffer)."""
        from qwen_audio_jax.batching.device_batch import DeviceBatch

        g, batch = self.geometry, DeviceBatch(self.placement)
        local = g.domains // jax.process_count()
        domains = list(range(jax.process_index() * local, (jax.process_index() + 1) * local))
        work = [("init", None)] + [("encode", f) for f in self.buckets.inference_frames]
        work += [("prefill", t) for t in self.buckets.chunks] + [("extend", self.buckets.chunks[-1]), ("decode", None)]
        bar = tqdm(work, desc="compiling", unit="program", disable=not progress)
        state = features = None
        with self.placement.activate():
            for name, size in bar:
                bar.set_postfix_str(f"{name}[{size}]" if size else name, refresh=True)
                if name == "init":
                    state, features = self.init()
                elif name == "encode":
                    arrays = batch.place(layout.encode_arrays({}, size, self.config.audio.num_mel_bins, g, domains))
                    features = self.encode(features, arrays["mel"], arrays["mel_lengths"], arrays["offsets"])
                elif name in ("prefill", "extend"):
                    rows = batch.place(layout.prefill_arrays({}, size, self.config, g, domains))
                    state, _ = self.prefill(state, features, rows, extend=name == "extend")
                else:
                    state, *_ = self.decode(state, jnp.asarray(True), chunk)
            jax.block_until_ready((state, features))
        return len(work), state, features


def _init(vocab, batch, max_pages, pool_shape, dtype, kv_int8, feature_shape):
    state = steps.empty_state(vocab, batch, max_pages, pool_shape, dtype, kv_int8)
    return state, jnp.zeros(feature_shape, dtype)
