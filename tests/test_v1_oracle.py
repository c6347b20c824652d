"""Self-checks of the independent Qwen-Audio v1 oracle (`tests._v1_reference`, `tests._v1_checkpoint`).

Every expected value here is written out by hand from /work/shared/REFERENCE.md (section numbers cited) or from
QwenLM/Qwen-Audio's files, never computed by the code under test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest
import torch

from tests import _v1_reference as ref
from tests._v1_checkpoint import (
    BASE_GENERATION_CONFIG,
    CHAT_GENERATION_CONFIG,
    INDEX_NAME,
    checkpoint_state_dict,
    load_v1_checkpoint_dir,
    make_v1_checkpoint_dir,
    real_v1_spec,
    spec_from_config,
)

TINY = dataclasses.replace(ref.V1Spec(), seq_length=32)  # NTK / logn switch on past 32 tokens


def _clip(n_samples: int, seed: int = 0) -> np.ndarray:
    t = np.arange(n_samples) / 16000
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n_samples)).astype(np.float32)


def _prompt(spans: list[int], text: int) -> list[int]:
    """`<|im_start|>user\\n` + one `<audio> pad* </audio>` per clip + `text` ordinary BPE ids."""
    ids = [151644, 872, 198]
    for span in spans:
        ids += [ref.AUDIO_START_ID] + [ref.AUDIO_PAD_ID] * (span - 2) + [ref.AUDIO_END_ID]
    return ids + [1000 + 37 * i for i in range(text)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny matmuls run faster on one thread (and leave the other cores to other test workers)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    return ref.init_random(TINY, seed=3)


# ----------------------------------------------------------------------------------------------- (a) real layout
def _reference_3_6_table() -> dict[str, tuple[int, ...]]:
    """docs/reference.md §3.6, written out (shapes of the 7B Qwen-Audio checkpoint)."""
    t = {"transformer.wte.weight": (155947, 4096), "transformer.ln_f.weight": (4096,), "lm_head.weight": (155947, 4096)}
    for i in range(32):
        p = f"transformer.h.{i}."
        t |= {
            p + "ln_1.weight": (4096,),
            p + "attn.c_attn.weight": (12288, 4096),
            p + "attn.c_attn.bias": (12288,),
            p + "attn.c_proj.weight": (4096, 4096),
            p + "ln_2.weight": (4096,),
            p + "mlp.w1.weight": (11008, 4096),
            p + "mlp.w2.weight": (11008, 4096),
            p + "mlp.c_proj.weight": (4096, 11008),
        }
    a = "transformer.audio."
    t |= {
        a + "conv1.weight": (1280, 80, 3),
        a + "conv1.bias": (1280,),
        a + "conv2.weight": (1280, 1280, 3),
        a + "conv2.bias": (1280,),
        a + "positional_embedding": (1500, 1280),
        a + "ln_post.weight": (1280,),
        a + "ln_post.bias": (1280,),
        a + "proj.weight": (4096, 1280),
        a + "proj.bias": (4096,),
        a + "audio_bos_eos_token.weight": (2, 4096),
    }
    for i in range(32):
        p = f"{a}blocks.{i}."
        for n in ("query", "value", "out"):
            t |= {p + f"attn.{n}.weight": (1280, 1280), p + f"attn.{n}.bias": (1280,)}
        t |= {
            p + "attn.key.weight": (1280, 1280),
            p + "mlp.0.weight": (5120, 1280),
            p + "mlp.0.bias": (5120,),
            p + "mlp.2.weight": (1280, 5120),
            p + "mlp.2.bias": (1280,),
        }
        for n in ("attn_ln", "mlp_ln"):
            t |= {p + f"{n}.weight": (1280,), p + f"{n}.bias": (1280,)}
    return t


def test_real_spec_matches_reference_checkpoint_table():
    with torch.device("meta"):
        model = ref.V1Model(real_v1_spec())
    state = model.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == _reference_3_6_table()
    # per-layer name counts: 8 per LM block, 15 per audio block; 3 LM + 10 audio singletons (749 in all)
    assert len([k for k in state if k.startswith("transformer.h.0.")]) == 8
    assert len([k for k in state if k.startswith("transformer.audio.blocks.31.")]) == 15
    assert len(state) == 3 + 32 * 8 + 10 + 32 * 15 == 749
    total = sum(v.numel() for v in state.values())
    assert total == 8_396_222_464  # docs/reference.md §5.3 (= total_size 16,792,444,928 bytes in bf16)
    assert 2 * total == 16_792_444_928
    assert total - sum(p.numel() for p in model.parameters()) == 1500 * 1280  # the stored positional buffer


def test_config_json_is_qwen_audios():
    """[QA] config.json, verbatim (docs/reference.md §3.1), against config_dict(real spec); and the round trip."""
    qa = json.loads("""{"architectures": ["QWenLMHeadModel"], "auto_map": {"AutoConfig":
      "configuration_qwen.QWenConfig", "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
      "attn_dropout_prob": 0.0, "bf16": false, "fp16": false, "fp32": false, "emb_dropout_prob": 0.0,
      "intermediate_size": 22016, "initializer_range": 0.02, "kv_channels": 128, "layer_norm_epsilon": 1e-05,
      "model_type": "qwen", "hidden_size": 4096, "num_attention_heads": 32, "num_hidden_layers": 32,
      "max_position_embeddings": 8192, "no_bias": true, "onnx_safe": null, "rotary_emb_base": 10000,
      "rotary_pct": 1.0, "scale_attn_weights": true, "seq_length": 2048, "tie_word_embeddings": false,
      "tokenizer_type": "QWenTokenizer", "transformers_version": "4.31.0", "use_cache": true, "vocab_size": 155947,
      "use_dynamic_ntk": true, "use_logn_attn": true, "audio": {"n_mels": 80, "n_ctx": 1500, "n_state": 1280,
      "n_head": 20, "n_layer": 32, "output_dim": 4096, "avg_pool": true, "add_audio_bos_eos_token": true,
      "audio_start_id": 155163}}""")
    assert ref.config_dict(real_v1_spec()) == qa
    assert spec_from_config(qa) == real_v1_spec()
    assert spec_from_config(ref.config_dict(TINY)) == TINY


# ----------------------------------------------------------------------------------------------- (b)-(d) formulas
@pytest.mark.parametrize(
    "seq_length, table",
    [
        (2048, {1: 1, 100: 1, 2048: 1, 2049: 3, 3000: 3, 4096: 3, 4097: 7, 8192: 7, 8193: 15, 16384: 15, 16385: 31}),
        (32, {1: 1, 32: 1, 33: 3, 47: 3, 64: 3, 65: 7, 128: 7, 129: 15}),
    ],
)
def test_ntk_alpha_table(seq_length, table):
    # docs/reference.md §3.4: max(2**ceil(log2(L/s) + 1) - 1, 1): 1 up to s, then 3 on (s, 2s], 7 on (2s, 4s], ...
    assert {n: ref.ntk_alpha(n, seq_length) for n in table} == table


def test_logn_factor_table():
    f = ref.logn_factors(32, 1024).numpy()
    assert f.dtype == np.float32 and f.shape == (1024,)
    assert (f[:32] == 1).all()  # 1-based positions 1..32 (0-based 0..31) are untouched
    # 1-based position i -> log(i)/log(32): 33 -> 1.008879, 64 -> 6/5, 128 -> 7/5, 1024 -> 2
    np.testing.assert_allclose(f[[32, 63, 127, 1023]], [1.0088788, 1.2, 1.4, 2.0], rtol=1e-6)
    g = ref.logn_factors(2048, 4096).numpy()
    assert (g[:2048] == 1).all()
    np.testing.assert_allclose(g[[2048, 4095]], [1.0000640, 12 / 11], rtol=1e-6)  # i = 2049, 4096


def test_rope_tables():
    spec = real_v1_spec()
    for alpha, base in [(1, 10000.0), (3, 10000 * 3 ** (128 / 126)), (7, 10000 * 7 ** (128 / 126))]:
        cos, sin = ref.rope_tables(spec, alpha, 50)
        assert cos.shape == sin.shape == (50, 128) and cos.dtype == torch.float32
        assert torch.equal(cos[:, :64], cos[:, 64:]) and torch.equal(sin[:, :64], sin[:, 64:])  # cat(freqs, freqs)
        angle = np.arange(50)[:, None] * base ** (-np.arange(0, 128, 2) / 128)[None]
        np.testing.assert_allclose(cos[:, :64].numpy(), np.cos(angle), atol=2e-5)
        np.testing.assert_allclose(sin[:, :64].numpy(), np.sin(angle), atol=2e-5)
    assert 10000 * 3 ** (128 / 126) == pytest.approx(30527.74, rel=1e-6)  # the NTK base for alpha 3


def test_sinusoids_formula(tiny):
    pe = ref.sinusoids(1500, 1280).numpy()
    inc = math.log(10000) / (640 - 1)
    t = np.arange(1500)[:, None] * np.exp(-inc * np.arange(640))[None]
    np.testing.assert_allclose(pe, np.concatenate([np.sin(t), np.cos(t)], 1), atol=2e-4)  # fp32 args up to 1499
    assert pe.shape == (1500, 1280) and (pe[0, :640] == 0).all() and (pe[0, 640:] == 1).all()
    assert torch.equal(tiny.transformer.audio.positional_embedding, ref.sinusoids(1500, 32))  # the buffer


# ----------------------------------------------------------------------------------------------- (e) tiny model
def test_features_front_end():
    mel, mel_len = ref.features(np.zeros(16000, np.float32))
    assert mel.shape == (80, 3000) and mel.dtype == torch.float32 and mel_len == 100
    assert torch.allclose(mel, torch.full_like(mel, -1.5))  # docs/reference.md §2: silence -> -1.5 everywhere
    wav = _clip(37777)
    mel, mel_len = ref.features(wav)
    assert mel_len == 236  # floor(37777 / 160) (docs/reference.md §3.2; HF would say 237)
    # docs/reference.md §2's numpy algorithm with 80 mels (rfft path) must agree with the torch.stft path
    x = np.zeros(480000, np.float32)
    x[: len(wav)] = wav
    xp = np.pad(x, (200, 200), mode="reflect")
    frames = xp[np.arange(400)[None] + 160 * np.arange(3001)[:, None]]
    power = np.abs(np.fft.rfft(frames * np.hanning(401)[:-1], n=400, axis=-1)) ** 2
    logmel = np.log10(np.maximum(1e-10, ref.mel_filters_80().numpy().astype(np.float64) @ power.T))[:, :-1]
    want = (np.maximum(logmel, logmel.max() - 8.0) + 4.0) / 4.0
    np.testing.assert_allclose(mel.numpy(), want, atol=1e-4)
    assert ref.features(np.concatenate([wav] * 20))[1] == 3000  # trimmed to 30 s


@pytest.mark.parametrize(
    "n_samples, span", [(480, 3), (8000, 14), (16159, 27), (37777, 61), (480000, 752), (600000, 752)]
)
def test_encoder_output_length(tiny, n_samples, span):
    # hand-computed: mel_len = L//160; after_cnn = (m-1)//2+1; tokens = (a-2)//2+1; span = tokens + 2
    mel, mel_len = ref.features(_clip(n_samples))
    out = ref.encode_audio(tiny, mel, mel_len)
    assert out.shape == (span, TINY.hidden_size) and out.dtype == torch.float32
    bos_eos = tiny.transformer.audio.audio_bos_eos_token.weight
    assert torch.equal(out[0], bos_eos[0]) and torch.equal(out[-1], bos_eos[1])
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError):  # mel_len 2 -> after_cnn 1: the original's AvgPool1d(2, 2) fails too
        ref.encode_audio(tiny, *ref.features(_clip(479)))


def test_audio_merge_in_order(tiny):
    clips = [_clip(8000, 1), _clip(16159, 2)]  # spans 14 and 27
    ids = _prompt([14, 27], text=5)
    logits, audio = ref.prompt_forward(tiny, ids, clips)
    assert logits.shape == (len(ids), TINY.vocab_size) and logits.dtype == torch.float32
    h = ref._embed(tiny, ids, audio)
    assert torch.equal(h[3:17], audio[0]) and torch.equal(h[17:44], audio[1])
    with pytest.raises(ValueError):
        ref.prompt_forward(tiny, ids, clips[::-1])  # spans no longer fit
    with pytest.raises(ValueError):
        ref.prompt_forward(tiny, ids, clips[:1])
    # the pad / tag ids' wte rows are never used (docs/reference.md §3.3): changing them changes nothing
    changed = ref.init_random(TINY, seed=3)
    with torch.no_grad():
        changed.transformer.wte.weight[[ref.AUDIO_START_ID, ref.AUDIO_END_ID, ref.AUDIO_PAD_ID]] += 5.0
    assert torch.equal(ref.prompt_logits(changed, ids, clips), logits)


def test_joint_clip_encoding(tiny):
    """joint_clips=True cuts every clip's mel at the request's longest after_cnn*2 ([QA] AudioEncoder.forward):
    the longest clip is unchanged, a shorter one's conv boundary (and so its whole sequence) moves."""
    clips = [_clip(8000, 1), _clip(16159, 2)]
    ids = _prompt([14, 27], text=3)
    _, alone = ref.prompt_forward(tiny, ids, clips)
    _, joint = ref.prompt_forward(tiny, ids, clips, joint_clips=True)
    assert torch.equal(alone[1], joint[1]) and alone[0].shape == joint[0].shape
    assert (alone[0][1:-1] - joint[0][1:-1]).abs().max() > 1e-6 and torch.equal(alone[0][0], joint[0][0])


def test_ntk_and_logn_are_active_past_seq_length(tiny):
    inert = ref.init_random(dataclasses.replace(TINY, seq_length=2048), seed=3)
    short, long = _prompt([14], text=15), _prompt([14], text=30)  # 32 and 47 tokens
    clip = [_clip(8000, 1)]
    assert torch.equal(ref.prompt_logits(tiny, short, clip), ref.prompt_logits(inert, short, clip))
    assert (ref.prompt_logits(tiny, long, clip) - ref.prompt_logits(inert, long, clip)).abs().max() > 1e-2
    no_logn = ref.init_random(dataclasses.replace(TINY, use_logn_attn=False), seed=3)
    d = (ref.prompt_logits(tiny, long, clip) - ref.prompt_logits(no_logn, long, clip)).abs().max(-1).values
    assert (d[:32] == 0).all() and (d[32:] > 1e-4).all()  # logn touches only 1-based positions > 32


def test_greedy_kv_cache_equals_recomputation_with_prefill_alpha(tiny):
    ids, clip = _prompt([14], text=30), [_clip(8000, 1)]  # 47 tokens > 32: alpha 3, logn on
    assert ref.prefill_alpha(TINY, len(ids)) == 3
    cached = ref.greedy(tiny, ids, clip, max_new_tokens=24)
    recomputed = ref.greedy(tiny, ids, clip, max_new_tokens=24, use_cache=False)
    assert cached == recomputed and len(cached) == 24  # 71 tokens at the end: a fresh alpha would be 7
    # one teacher-forced forward with alpha 3 predicts the same tokens; alpha 7 (what L = 71 alone would pick) moves
    # the logits, so holding the prefill alpha is what makes the two decoders agree
    h = ref._embed(tiny, ids, [ref.encode_audio(tiny, *ref.features(clip[0]))])
    full = torch.cat([h, tiny.transformer.wte(torch.tensor(cached[:-1]))])
    with torch.no_grad():
        lg3, _ = ref._lm(tiny, full, 3)
        lg7, _ = ref._lm(tiny, full, 7)
    assert lg3[len(ids) - 1 :].argmax(-1).tolist() == cached
    assert (lg3 - lg7).abs().max() > 1e-2
    # stop ids: generation ends at (and includes) the first stop id
    k = 5
    assert ref.greedy(tiny, ids, clip, 24, stop_ids=[cached[k]]) == cached[: cached.index(cached[k]) + 1]
    assert ref.greedy(tiny, ids, clip, 0) == []


@pytest.mark.parametrize("shards", [1, 3])
def test_checkpoint_dir_roundtrip(tmp_path, shards):
    d = make_v1_checkpoint_dir(tmp_path / "ckpt", spec=TINY, seed=7, shards=shards, chat=shards == 1)
    files = sorted(p.name for p in d.iterdir())
    weights = ["model.safetensors"] if shards == 1 else [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    extra = [] if shards == 1 else [INDEX_NAME]
    assert files == sorted(
        [
            "config.json",
            "generation_config.json",
            "mel_filters.npz",
            "qwen.tiktoken",
            "tokenizer_config.json",
            *weights,
            *extra,
        ]
    )
    want = ref.init_random(TINY, seed=7).state_dict()
    got = checkpoint_state_dict(d)
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    reloaded = load_v1_checkpoint_dir(d).state_dict()
    assert all(torch.equal(reloaded[k], want[k]) for k in want)
    if shards > 1:
        index = json.loads((d / INDEX_NAME).read_text())
        assert set(index) == {"metadata", "weight_map"} and set(index["weight_map"]) == set(want)
        assert index["metadata"]["total_size"] == 4 * sum(v.numel() for v in want.values())
        assert set(index["weight_map"].values()) == set(weights)
    assert json.loads((d / "config.json").read_text()) == ref.config_dict(TINY)
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen == (CHAT_GENERATION_CONFIG if shards == 1 else BASE_GENERATION_CONFIG)
    assert hashlib.sha256((d / "qwen.tiktoken").read_bytes()).hexdigest() == (
        "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
    )  # docs/reference.md §4.1
    with np.load(d / "mel_filters.npz") as f:
        assert f["mel_80"].shape == (80, 201) and f["mel_80"].dtype == np.float32
    assert ref.init_random(TINY, seed=8).state_dict()["lm_head.weight"].ne(want["lm_head.weight"]).any()
