"""DPO training-step throughput: JAX `train_step` vs the same step in PyTorch, same weights, batch and loss.

Model: the generate benchmark's ~142M-parameter Qwen2-Audio (real 156,032 vocab, random weights), encoder
frozen, fp32 on CPU. Batch: 4 preference pairs over synthetic clips of 0.6-1.2 s (prompt ~60-90 tokens, the
answers a few tokens plus <|im_end|>). One step on both sides = policy forward on chosen + rejected, frozen
reference forward (no grad), sigmoid DPO loss (beta 0.1), backward, global-norm clip 1.0, AdamW update.

PyTorch side: transformers' Qwen2AudioForConditionalGeneration (eager attention), log-probs from the full
logits as TRL computes them, torch.optim.AdamW. Reports tokens/s (non-pad tokens of the 8 sequences per step,
median of --steps after warm-up) for both and the ratio. One JSON line.

    python benchmarks/train_step.py [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPEC = dict(
    audio_d=384,
    audio_layers=4,
    audio_heads=6,
    audio_ffn=1536,
    hidden=384,
    layers=8,
    heads=6,
    kv_heads=6,
    inter=1024,
    vocab=156032,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import torch

    from qwen_audio_jax.batching.buckets import Buckets
    from qwen_audio_jax.bundled import write_tokenizer_dir
    from qwen_audio_jax.model.params import build_module
    from qwen_audio_jax.text.processor import Processor
    from qwen_audio_jax.text.tokenizer import Qwen2AudioTokenizer
    from qwen_audio_jax.training.data import PreferenceExample
    from qwen_audio_jax.training.loss import LossConfig
    from qwen_audio_jax.training.optimizer import OptimConfig, make_optimizer
    from qwen_audio_jax.training.pipeline import ExamplePreparer, batch_shape, collate_step
    from qwen_audio_jax.training.step import StepConfig, TrainBatch, TrainState, train_step
    from tests._hf_models import TinySpec, build_hf_model, jax_twin
    from tests._synthetic_prefs import SOUNDS, synth

    rng = np.random.default_rng(0)
    tok = Qwen2AudioTokenizer.from_dir(write_tokenizer_dir(tempfile.mkdtemp()))
    processor = Processor(tok)
    examples = [
        PreferenceExample(
            str(i),
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "audio", "audio": synth(i % 4, rng)},
                            {"type": "text", "text": "What sound is this?"},
                        ],
                    }
                ]
            },
            SOUNDS[i % 4],
            SOUNDS[(i + 1) % 4],
        )
        for i in range(4)
    ]
    micro = [ExamplePreparer(examples, processor, True, "<|im_end|>")(i) for i in range(4)]
    shape = batch_shape([micro], Buckets())
    arrays = collate_step([micro], shape, 151643, 128)
    tokens_per_step = int(arrays["mask"].sum())

    policy_hf, ref_hf = (
        build_hf_model(TinySpec("bench", **SPEC), seed=0),
        build_hf_model(TinySpec("bench", **SPEC), seed=0),
    )
    config, params = jax_twin(policy_hf)

    # ---- JAX ------------------------------------------------------------------------------------------------
    optim = OptimConfig(learning_rate=1e-5, min_learning_rate=1e-6, weight_decay=0.05, freeze_audio_encoder=True)
    tx, lr = make_optimizer(optim, 1000)
    model = build_module(config)
    cfg = StepConfig(LossConfig(), frozen_encoder=True, max_completion=shape.completion)
    step = jax.jit(lambda s, b, r: train_step(model, tx, lr, cfg, s, b, r), donate_argnums=(0,))
    params = jax.device_put(params)
    ref_params = jax.tree_util.tree_map(jnp.copy, params)
    state = TrainState(jnp.asarray(0), params, tx.init(params), jax.random.PRNGKey(0))
    batch = TrainBatch(**{k: jnp.asarray(v) for k, v in arrays.items()})
    times = []
    for _ in range(args.steps + 1):
        t = time.perf_counter()
        state, metrics = step(state, batch, ref_params)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t)
    jax_step = statistics.median(times[1:])

    # ---- PyTorch ----------------------------------------------------------------------------------------------
    for p in policy_hf.audio_tower.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(
        [p for p in policy_hf.parameters() if p.requires_grad], lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05
    )
    t_ = arrays["tokens"][0].reshape(-1, arrays["tokens"].shape[-1])
    m_ = arrays["mask"][0].reshape(t_.shape)
    c_ = arrays["completion_mask"][0].reshape(t_.shape)
    lengths = arrays["mel_lengths"][0]
    real = lengths > 0
    mel = np.zeros((2 * real.sum(), 128, 3000), np.float32)
    mel[:, :, : arrays["mel"].shape[-1]] = np.concatenate([arrays["mel"][0][real]] * 2)
    inputs = dict(
        input_ids=torch.from_numpy(t_).long(),
        attention_mask=torch.from_numpy(m_).long(),
        input_features=torch.from_numpy(mel),
        feature_attention_mask=(
            torch.arange(3000)[None] < torch.from_numpy(np.concatenate([lengths[real]] * 2))[:, None]
        ).long(),
    )
    w = torch.from_numpy((c_[:, 1:] * m_[:, 1:]).astype(np.float32))
    targets = torch.from_numpy(t_[:, 1:]).long()

    def logps(m):
        logits = m(**inputs).logits[:, :-1].float()
        return (torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0] * w).sum(-1)

    def torch_step():
        with torch.no_grad():
            ref = logps(ref_hf)
        pol = logps(policy_hf)
        b = pol.shape[0] // 2
        loss = -torch.nn.functional.logsigmoid(0.1 * ((pol[:b] - pol[b:]) - (ref[:b] - ref[b:]))).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy_hf.parameters(), 1.0)
        opt.step()
        return loss.item()

    times = []
    for _ in range(args.steps + 1):
        t = time.perf_counter()
        torch_step()
        times.append(time.perf_counter() - t)
    ref_step = statistics.median(times[1:])
    print(
        json.dumps(
            {
                "benchmark": "train_step",
                "loss": "dpo sigmoid",
                "params": sum(p.numel() for p in policy_hf.parameters()),
                "pairs": 4,
                "tokens_per_step": tokens_per_step,
                "jax": {"step_s": round(jax_step, 3), "tokens_per_s": round(tokens_per_step / jax_step, 1)},
                "reference": {"step_s": round(ref_step, 3), "tokens_per_s": round(tokens_per_step / ref_step, 1)},
                "speedup": round(ref_step / jax_step, 2),
                "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.system()}, jax {jax.__version__} "
                f"({jax.default_backend()}), torch {torch.__version__} ({torch.get_num_threads()} threads)",
            }
        )
    )


if __name__ == "__main__":
    main()
