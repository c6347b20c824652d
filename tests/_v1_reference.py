"""An independent PyTorch oracle for Qwen-Audio (v1), written from the project's reference text (docs/reference.md
§3, and §2 for the log-mel) and cross-checked against QwenLM/Qwen-Audio@0b0e882 `audio.py`, `modeling_qwen.py`,
`tokenization_qwen.py` ([QA] below). Nothing here reads or imports `qwen_audio_jax`: it is the yardstick the JAX
port is measured against.

Everything runs one request at a time (batch 1, "the reference run alone", docs/reference.md §7.9), so 2-D tensors
are used throughout: `[T, D]` hidden states, `[T, H, Dh]` heads. Public API:

    V1Spec, config_dict(spec), V1Model, init_random(spec, seed)
    features(waveform_16k) -> (mel [80, 3000] fp32, mel_len)          encode_audio(model, mel, mel_len) -> [span, D]
    prompt_forward(model, ids, clips) -> (logits [T, V] fp32, [clip [span_i, D] fp32])
    prompt_logits(model, ids, clips) -> [T, V] fp32                     greedy(model, ids, clips, n, stop_ids) -> ids
    ntk_alpha(L, seq_length), logn_factors(seq_length, n), rope_tables(spec, alpha, n), sinusoids(length, channels)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Ids ([QA] tokenization_qwen.py; docs/reference.md §3.5 / §3.3).
AUDIO_START_ID = 155163  # <audio>; `</audio>` = audio_start_id + 1 (modeling_qwen.py: eos_pos = ... start_id + 1)
AUDIO_END_ID = 155164
AUDIO_PAD_ID = 151851  # [[[AUDIO:modality]]]
ENDOFTEXT_ID = 151643
# Front end constants ([QA] audio.py:20-27).
SAMPLE_RATE, N_FFT, HOP_LENGTH, N_SAMPLES, N_FRAMES = 16000, 400, 160, 480000, 3000


@dataclasses.dataclass(frozen=True)
class V1Spec:
    """Model dimensions. `intermediate_size` is the config value; the MLP width is intermediate_size // 2
    ([QA] modeling_qwen.py QWenMLP). The audio projector output (`output_dim`) is always the LM width."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    kv_channels: int = 16
    intermediate_size: int = 256
    vocab_size: int = 155947  # the real vocab: tiny models keep the real special ids (up to 155164)
    seq_length: int = 2048  # NTK / logn threshold (docs/reference.md §3.4); tiny tests set e.g. 32
    layer_norm_epsilon: float = 1e-5
    rotary_emb_base: int = 10000
    max_position_embeddings: int = 8192
    use_dynamic_ntk: bool = True
    use_logn_attn: bool = True
    audio_n_state: int = 32
    audio_n_head: int = 4
    audio_n_layer: int = 2
    audio_n_mels: int = 80
    audio_n_ctx: int = 1500

    def __post_init__(self):
        # QWenAttention splits c_attn by hidden_size and uses head_dim = hidden // heads, while c_attn's width is
        # 3 * kv_channels * heads and RoPE uses kv_channels: they only agree when kv_channels * heads == hidden.
        assert self.kv_channels * self.num_attention_heads == self.hidden_size, self
        assert self.audio_n_state % self.audio_n_head == 0 and self.audio_n_mels == 80, self
        assert self.vocab_size > AUDIO_END_ID, self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def audio_output_dim(self) -> int:
        return self.hidden_size


def config_dict(spec: V1Spec) -> dict:
    """`config.json` with exactly the keys of [QA] config.json (docs/reference.md §3.1), filled from `spec`."""
    return {
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {
            "AutoConfig": "configuration_qwen.QWenConfig",
            "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel",
        },
        "attn_dropout_prob": 0.0,
        "bf16": False,
        "fp16": False,
        "fp32": False,
        "emb_dropout_prob": 0.0,
        "intermediate_size": spec.intermediate_size,
        "initializer_range": 0.02,
        "kv_channels": spec.kv_channels,
        "layer_norm_epsilon": spec.layer_norm_epsilon,
        "model_type": "qwen",
        "hidden_size": spec.hidden_size,
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": spec.num_hidden_layers,
        "max_position_embeddings": spec.max_position_embeddings,
        "no_bias": True,
        "onnx_safe": None,
        "rotary_emb_base": spec.rotary_emb_base,
        "rotary_pct": 1.0,
        "scale_attn_weights": True,
        "seq_length": spec.seq_length,
        "tie_word_embeddings": False,
        "tokenizer_type": "QWenTokenizer",
        "transformers_version": "4.31.0",
        "use_cache": True,
        "vocab_size": spec.vocab_size,
        "use_dynamic_ntk": spec.use_dynamic_ntk,
        "use_logn_attn": spec.use_logn_attn,
        "audio": {
            "n_mels": spec.audio_n_mels,
            "n_ctx": spec.audio_n_ctx,
            "n_state": spec.audio_n_state,
            "n_head": spec.audio_n_head,
            "n_layer": spec.audio_n_layer,
            "output_dim": spec.audio_output_dim,
            "avg_pool": True,
            "add_audio_bos_eos_token": True,
            "audio_start_id": AUDIO_START_ID,
        },
    }


# ----------------------------------------------------------------------------------------------- position rules
def ntk_alpha(true_seq_len: int, seq_length: int):
    """Dynamic-NTK alpha ([QA] modeling_qwen.py QWenModel.get_ntk_alpha; docs/reference.md §3.4): 1 for L <= seq_length,
    3 for L in (s, 2s], 7 for (2s, 4s], ... (same float expression as the original, so boundaries match)."""
    context_value = math.log(true_seq_len / seq_length, 2) + 1  # noqa: FURB163 (the original's expression)
    return max(2 ** math.ceil(context_value) - 1, 1)


def logn_factors(seq_length: int, n: int) -> torch.Tensor:
    """[n] fp32: the query factor for 0-based position p is log(p+1)/log(seq_length) when p+1 > seq_length, else 1
    ([QA] QWenAttention.__init__ `logn_list = [math.log(i, seq_length) if i > seq_length else 1 for i in
    range(1, 32768)]`, built as a default-dtype tensor; forward slices it at the query's absolute positions
    [kv_len - q_len, kv_len), so a decode step uses its own absolute position)."""
    return torch.tensor([math.log(i, seq_length) if i > seq_length else 1 for i in range(1, n + 1)])


def rope_tables(spec: V1Spec, alpha, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [n, kv_channels] fp32, for positions 0..n-1 ([QA] RotaryEmbedding.update_rotary_pos_emb_cache):
    base' = base * alpha ** (dim / (dim - 2)) in Python floats; inv_freq = 1 / base' ** (arange(0, dim, 2).float()
    / dim) in fp32; freqs = outer(positions fp32, inv_freq); emb = cat(freqs, freqs)."""
    dim = spec.kv_channels
    base = spec.rotary_emb_base * alpha ** (dim / (dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
    freqs = torch.outer(torch.arange(n).type_as(inv_freq), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _apply_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """t [T, H, Dh]; cos/sin [T, 1, Dh] fp32. Computed in fp32, cast back ([QA] apply_rotary_pos_emb); rotate_half
    is the half split "... (j d) -> ... j d", j=2, then cat(-x2, x1) ([QA] _rotate_half)."""
    x1, x2 = t.float().chunk(2, dim=-1)
    return (t.float() * cos + torch.cat((-x2, x1), dim=-1) * sin).type_as(t)


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> torch.Tensor:
    """[length, channels] fp32 ([QA] audio.py sinusoids; docs/reference.md §3.2): inc = ln(10000)/(channels/2 - 1),
    inv = exp(-inc * arange(channels/2)), t = arange(length)[:, None] * inv, cat(sin t, cos t)."""
    assert channels % 2 == 0
    log_timescale_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, np.newaxis] * inv_timescales[np.newaxis, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


# ----------------------------------------------------------------------------------------------- language model
class RMSNorm(nn.Module):
    """[QA] modeling_qwen.py RMSNorm: normalise in fp32, cast back, then times weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class QWenAttention(nn.Module):
    def __init__(self, s: V1Spec):
        super().__init__()
        self.s = s
        proj = s.kv_channels * s.num_attention_heads
        self.c_attn = nn.Linear(s.hidden_size, 3 * proj)  # with bias (docs/reference.md §3.4, 7.5)
        self.c_proj = nn.Linear(s.hidden_size, proj, bias=False)  # no_bias (as [QA]: Linear(hidden, proj))

    def forward(self, x, cos, sin, logn, past):
        """x [T, D]; cos/sin [T, 1, Dh]; logn [T] or None; past (k, v) each [P, H, Dh] or None."""
        T, H, Dh = x.shape[0], self.s.num_attention_heads, self.s.head_dim
        q, k, v = (t.reshape(T, H, Dh) for t in self.c_attn(x).split(self.s.hidden_size, dim=-1))  # q | k | v
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        if past is not None:
            k, v = torch.cat((past[0], k), 0), torch.cat((past[1], v), 0)
        present = (k, v)  # cached post-RoPE keys, as [QA] (RoPE before the cache concat)
        if logn is not None:  # [QA]: after RoPE and the concat, query only, inference only
            q = q * logn.type_as(q)[:, None, None]
        S = k.shape[0]
        scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(Dh)  # scale_attn_weights: / sqrt(head_dim)
        causal = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)  # query t sits at absolute S - T + t
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        w = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = torch.einsum("hts,shd->thd", w, v).reshape(T, H * Dh)
        return self.c_proj(out), present


class QWenMLP(nn.Module):
    def __init__(self, s: V1Spec):
        super().__init__()
        ff = s.intermediate_size // 2
        self.w1 = nn.Linear(s.hidden_size, ff, bias=False)
        self.w2 = nn.Linear(s.hidden_size, ff, bias=False)
        self.c_proj = nn.Linear(ff, s.hidden_size, bias=False)

    def forward(self, x):
        return self.c_proj(self.w1(x) * F.silu(self.w2(x)))  # w2 is the gate (docs/reference.md §3.4, 7.6)


class QWenBlock(nn.Module):
    def __init__(self, s: V1Spec):
        super().__init__()
        self.ln_1 = RMSNorm(s.hidden_size, s.layer_norm_epsilon)
        self.attn = QWenAttention(s)
        self.ln_2 = RMSNorm(s.hidden_size, s.layer_norm_epsilon)
        self.mlp = QWenMLP(s)

    def forward(self, x, cos, sin, logn, past):
        a, present = self.attn(self.ln_1(x), cos, sin, logn, past)
        h = x + a
        return h + self.mlp(self.ln_2(h)), present


# ----------------------------------------------------------------------------------------------- audio encoder
class AudioAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)  # k has no bias (docs/reference.md §7.3)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x):  # x [T, n_state]; [QA] audio.py MultiHeadAttention.qkv_attention
        T, n = x.shape
        scale = (n // self.n_head) ** -0.25  # on both q and k
        q = self.query(x).view(T, self.n_head, -1).transpose(0, 1) * scale
        k = self.key(x).view(T, self.n_head, -1).permute(1, 2, 0) * scale
        v = self.value(x).view(T, self.n_head, -1).transpose(0, 1)
        w = F.softmax(q @ k, dim=-1).to(q.dtype)
        return self.out((w @ v).transpose(0, 1).reshape(T, n))


class AudioBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.attn = AudioAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)  # eps 1e-5
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x):
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    def __init__(self, s: V1Spec):
        super().__init__()
        self.conv1 = nn.Conv1d(s.audio_n_mels, s.audio_n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(s.audio_n_state, s.audio_n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(s.audio_n_ctx, s.audio_n_state))  # persistent
        self.blocks = nn.ModuleList([AudioBlock(s.audio_n_state, s.audio_n_head) for _ in range(s.audio_n_layer)])
        self.ln_post = nn.LayerNorm(s.audio_n_state)
        self.proj = nn.Linear(s.audio_n_state, s.audio_output_dim)
        self.audio_bos_eos_token = nn.Embedding(2, s.audio_output_dim)


class QWenModel(nn.Module):
    def __init__(self, s: V1Spec):
        super().__init__()
        self.wte = nn.Embedding(s.vocab_size, s.hidden_size)
        self.h = nn.ModuleList([QWenBlock(s) for _ in range(s.num_hidden_layers)])
        self.ln_f = RMSNorm(s.hidden_size, s.layer_norm_epsilon)
        self.audio = AudioEncoder(s)


class V1Model(nn.Module):
    """QWenLMHeadModel's module tree; `state_dict()` names are exactly docs/reference.md §3.6's."""

    def __init__(self, spec: V1Spec):
        super().__init__()
        self.spec = spec
        self.transformer = QWenModel(spec)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)  # untied


def init_random(spec: V1Spec | None = None, seed: int = 0, dtype: torch.dtype = torch.float32) -> V1Model:
    """Random weights, deterministic in `seed`. Linear/conv weights ~ N(0, 1/fan_in) (0.0156 at the real width 4096,
    i.e. the usual ~0.02; at tiny widths it keeps activations O(1) so attention is not uniform and RoPE/NTK/logn
    mistakes move the logits); every bias ~ N(0, 0.1); norm weights 1 + N(0, 0.1); embedding rows ~ N(0, 1).
    The positional_embedding buffer stays sinusoids(n_ctx, n_state), as in the checkpoint."""
    g = torch.Generator().manual_seed(seed)
    model = V1Model(V1Spec() if spec is None else spec)

    def randn(p):
        return torch.randn(p.shape, generator=g, dtype=torch.float32)

    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (RMSNorm, nn.LayerNorm)):
                mod.weight.copy_(1 + 0.1 * randn(mod.weight))
                if getattr(mod, "bias", None) is not None:
                    mod.bias.copy_(0.1 * randn(mod.bias))
            elif isinstance(mod, nn.Embedding):
                mod.weight.copy_(randn(mod.weight))
            elif isinstance(mod, (nn.Linear, nn.Conv1d)):
                mod.weight.copy_(randn(mod.weight) * mod.weight[0].numel() ** -0.5)
                if mod.bias is not None:
                    mod.bias.copy_(0.1 * randn(mod.bias))
    return model.to(dtype).eval()


# ----------------------------------------------------------------------------------------------- front end
def mel_filters_80() -> torch.Tensor:
    """[80, 201] fp32: Qwen-Audio's mel_filters.npz['mel_80'] when ../shared has it, else librosa's Slaney filters
    (equal within 1.3e-9, docs/reference.md §2)."""
    from tests._paths import MEL_FILTERS_NPZ

    if MEL_FILTERS_NPZ.is_file():
        with np.load(MEL_FILTERS_NPZ) as f:
            return torch.from_numpy(np.asarray(f["mel_80"], np.float32))
    import librosa

    return torch.from_numpy(librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=80).astype(np.float32))


def after_cnn(mel_len: int) -> int:
    return (mel_len - 1) // 2 + 1  # [QA] audio.py get_T_after_cnn: conv k3 p1 s1, then k3 p1 s2


def audio_token_num(mel_len: int) -> int:
    return (after_cnn(mel_len) - 2) // 2 + 1  # [QA] tokenization_qwen.py process_audio; span = this + 2


def features(waveform_16k) -> tuple[torch.Tensor, int]:
    """mono 16 kHz waveform [L] -> (log-mel [80, 3000] fp32, mel_len = min(L, 480000) // 160) ([QA]
    tokenization_qwen.py process_audio + audio.py log_mel_spectrogram; docs/reference.md §3.2)."""
    audio = torch.as_tensor(np.asarray(waveform_16k, dtype=np.float32).reshape(-1))
    mel_len = min(audio.shape[0], N_SAMPLES) // HOP_LENGTH  # floor (HF uses ceil, docs/reference.md §7.8)
    audio = F.pad(audio[:N_SAMPLES], (0, max(0, N_SAMPLES - audio.shape[0])))  # pad_or_trim
    stft = torch.stft(
        audio, N_FFT, HOP_LENGTH, window=torch.hann_window(N_FFT), center=True, pad_mode="reflect", return_complex=True
    )
    magnitudes = stft[..., :-1].abs() ** 2  # [201, 3000]: drop the last frame
    log_spec = torch.clamp(mel_filters_80() @ magnitudes, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0, mel_len


@torch.no_grad()
def encode_audio(model: V1Model, mel: torch.Tensor, mel_len: int, n_frames: int | None = None) -> torch.Tensor:
    """One clip's embedding sequence [audio_token_num + 2, D] fp32 = cat(bos, frames, eos) ([QA] audio.py
    AudioEncoder.forward/encode; docs/reference.md §3.2). The mel is cut to after_cnn*2 frames; `n_frames` overrides
    that cut (the original cuts a multi-clip request at the batch maximum, then masks keys / zeroes rows past the clip's
    own after_cnn, which is equivalent to keeping the first after_cnn conv rows, as done here)."""
    if after_cnn(mel_len) < 2:  # the original's AvgPool1d(2, 2) raises on a 1-row input (mel_len < 3)
        raise ValueError(f"mel_len {mel_len} < 3: the clip is too short (under 480 samples)")
    enc = model.transformer.audio
    dtype = enc.conv1.weight.dtype
    a, n = after_cnn(mel_len), audio_token_num(mel_len)
    assert n_frames is None or n_frames >= 2 * a, (n_frames, mel_len)
    x = torch.as_tensor(mel)[None, :, : (n_frames or 2 * a)].to(dtype)
    x = F.gelu(enc.conv2(F.gelu(enc.conv1(x))))[0].T  # [T, n_state], exact GELU
    x = (x + enc.positional_embedding[: x.shape[0]]).to(dtype)[:a]
    for block in enc.blocks:
        x = block(x)
    x = F.avg_pool1d(x.T[None], 2, 2)[0].T  # AvgPool1d(2, 2) -> [a // 2, n_state]
    x = enc.proj(enc.ln_post(x))  # ln_post after the pool (docs/reference.md §7.2)
    bos, eos = enc.audio_bos_eos_token.weight[0], enc.audio_bos_eos_token.weight[1]
    out = torch.cat([bos[None], x[:n], eos[None]])
    assert out.shape[0] == n + 2
    return out.float()


def _encode_clips(model, clips, joint_clips: bool) -> list[torch.Tensor]:
    """A clip is a 1-D 16 kHz waveform or a `(mel [80, 3000], mel_len)` pair from `features`."""
    pairs = [c if isinstance(c, tuple) else features(c) for c in clips]
    n_frames = max(2 * after_cnn(m) for _, m in pairs) if (joint_clips and pairs) else None
    return [encode_audio(model, mel, m, n_frames) for mel, m in pairs]


# ----------------------------------------------------------------------------------------------- LM forward
def _embed(model: V1Model, ids: Sequence[int], audio: list[torch.Tensor]) -> torch.Tensor:
    """wte(ids) [T, D] with hidden[a:b+1] = clip sequence for each `<audio>`..`</audio>` pair, in order
    ([QA] modeling_qwen.py QWenModel.forward, first forward only; docs/reference.md §3.3)."""
    ids_t = torch.tensor(list(ids), dtype=torch.long)
    h = model.transformer.wte(ids_t)
    starts = torch.where(ids_t == AUDIO_START_ID)[0].tolist()
    ends = torch.where(ids_t == AUDIO_END_ID)[0].tolist()
    if not (len(starts) == len(ends) == len(audio)):
        raise ValueError(f"{len(starts)} <audio>, {len(ends)} </audio> and {len(audio)} clips")
    for a, b, seq in zip(starts, ends, audio):
        if b - a + 1 != seq.shape[0]:
            raise ValueError(f"span {a}..{b} holds {b - a + 1} ids, the clip has {seq.shape[0]} embeddings")
        h[a : b + 1] = seq.to(h.dtype)
    return h


def _lm(model: V1Model, h: torch.Tensor, alpha, past=None, last_only: bool = False):
    """h [T, D] at positions P..P+T-1 (P = cached length) -> (logits [T, V] fp32 (only the last row [1, V] when
    `last_only`; rows are independent after the blocks), per-layer (k, v) cache)."""
    s = model.spec
    P = 0 if past is None else past[0][0].shape[0]
    cos, sin = rope_tables(s, alpha, P + h.shape[0])
    cos, sin = cos[P:, None, :], sin[P:, None, :]
    logn = logn_factors(s.seq_length, P + h.shape[0])[P:] if s.use_logn_attn else None
    presents = []
    for i, block in enumerate(model.transformer.h):
        h, present = block(h, cos, sin, logn, None if past is None else past[i])
        presents.append(present)
    h = h[-1:] if last_only else h
    return model.lm_head(model.transformer.ln_f(h)).float(), presents


def prefill_alpha(spec: V1Spec, prompt_len: int):
    """The alpha fixed at prefill and reused by every decode step ([QA] QWenModel.forward: decode steps read
    rotary_emb._ntk_alpha_cached_list)."""
    return ntk_alpha(prompt_len, spec.seq_length) if spec.use_dynamic_ntk else 1.0


@torch.no_grad()
def prompt_forward(model: V1Model, ids: Sequence[int], clips=(), *, joint_clips: bool = False):
    """-> (logits [T, V] fp32 for the whole prompt, [clip embedding sequence [span_i, D] fp32])."""
    audio = _encode_clips(model, clips, joint_clips)
    logits, _ = _lm(model, _embed(model, ids, audio), prefill_alpha(model.spec, len(ids)))
    return logits, audio


def prompt_logits(model: V1Model, ids: Sequence[int], clips=(), *, joint_clips: bool = False) -> torch.Tensor:
    return prompt_forward(model, ids, clips, joint_clips=joint_clips)[0]


@torch.no_grad()
def greedy(
    model: V1Model,
    ids: Sequence[int],
    clips=(),
    max_new_tokens: int = 16,
    stop_ids: Sequence[int] = (),
    *,
    use_cache: bool = True,
    joint_clips: bool = False,
) -> list[int]:
    """Greedy decoding -> the new ids (a stop id, when produced, included and last). `use_cache=False` recomputes
    the whole sequence each step (audio merged at the prompt's spans only) with the prefill alpha held fixed."""
    audio = _encode_clips(model, clips, joint_clips)
    h = _embed(model, ids, audio)
    alpha = prefill_alpha(model.spec, len(ids))
    logits, past = _lm(model, h, alpha, last_only=True)
    out: list[int] = []
    while len(out) < max_new_tokens:
        tok = int(torch.argmax(logits[-1]))
        out.append(tok)
        if tok in stop_ids or len(out) == max_new_tokens:
            break
        if use_cache:  # no audio merge after the first forward ([QA]: only when past_key_values is None)
            logits, past = _lm(model, model.transformer.wte(torch.tensor([tok])), alpha, past)
        else:
            full = torch.cat([h, model.transformer.wte(torch.tensor(out))])
            logits, _ = _lm(model, full, alpha, last_only=True)
    return out
