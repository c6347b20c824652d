"""Device suite, part 3: the same work through transformers (PyTorch) on the same GPU, side by side: a 7B-shaped
random-weight Qwen2AudioForConditionalGeneration in bf16 (SDPA attention): prefill of a text prompt, decode
steps through `generate` at batch 1 and 8, and the audio tower on one 30 s clip."""

from __future__ import annotations

import time

import numpy as np
from _device_common import median_time


def _hf_model(config, smoke: bool):
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from qwen_audio_jax.conversion.hf_config import to_hf_config

    hf = {k: v for k, v in to_hf_config(config).items() if k not in ("model_type", "architectures", "torch_dtype")}
    cfg = Qwen2AudioConfig(**hf)
    cfg._attn_implementation = "sdpa"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # created in bf16: a 7B never exists in fp32 on the device
    try:
        with torch.device(device):
            model = Qwen2AudioForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(default)
    return model.eval(), device


def section_torch(suite, config, prompt_lengths, batches, context: int) -> None:
    import torch

    model, device = _hf_model(config, suite.smoke)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)

    def ids(b, t):
        return torch.as_tensor(rng.integers(100, 50000, size=(b, t)), device=device)

    with torch.no_grad():
        for t in prompt_lengths:
            if suite.left() < 30:
                suite.emit("torch", prefill_tokens=t, skipped="out of time")
                continue
            x = ids(1, t)

            def prefill(x=x):
                model(input_ids=x, use_cache=True)
                sync()

            s = median_time(prefill, reps=3 if not suite.smoke else 1)
            suite.emit("torch", what="prefill", tokens=t, seconds=round(s, 4), tokens_per_s=round(t / s))
        new = 32 if not suite.smoke else 4
        for b in batches:
            if suite.left() < 30:
                suite.emit("torch", what="decode", batch=b, skipped="out of time")
                continue
            x = ids(b, context)
            kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)

            def generate(n, x=x, kw=kw):
                t0 = time.perf_counter()
                model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, **kw)
                sync()
                return time.perf_counter() - t0

            generate(2)  # warm-up
            per_step = (generate(new + 1) - generate(1)) / new  # generate's own loop, prefill subtracted
            suite.emit("torch", what="decode", batch=b, context=context, step_ms=round(per_step * 1e3, 3),
                       tokens_per_s=round(b / per_step, 1))  # fmt: skip
        mel = torch.as_tensor(
            rng.standard_normal((1, config.audio.num_mel_bins, 3000)), dtype=torch.bfloat16, device=device
        )

        def encode():
            model.audio_tower(mel)
            sync()

        s = median_time(encode, reps=5 if not suite.smoke else 1)
        suite.emit("torch", what="encoder", clip_s=30, seconds_per_clip=round(s, 5), clips_per_s=round(1 / s, 1))
    model = None
    if device == "cuda":
        torch.cuda.empty_cache()
