"""Numerical parity of the JAX model with transformers' Qwen2AudioForConditionalGeneration (fp32, eager)."""

import numpy as np
import pytest

from tests._oracles import require

torch = require("torch", "the parity oracle")

import jax.numpy as jnp  # noqa: E402

from qwen_audio_jax.audio.lengths import encoder_lengths  # noqa: E402
from qwen_audio_jax.model.decoder import positions_from_mask  # noqa: E402
from qwen_audio_jax.model.params import build_module  # noqa: E402
from tests._hf_models import SPECS, build_hf_model, jax_twin, random_batch  # noqa: E402

pytestmark = pytest.mark.parity

# Fixed tolerances (fp32): ~1e-5 per module, 1e-4 on logits.
MODULE_ATOL = 1e-5
LOGITS_ATOL = 1e-4

# Request 0: one clip; request 1: two clips in one turn; request 2: text only.
CLIPS = [[2.13], [1.31, 0.705], []]
TEXT = [9, 5, 23]


def _hf_audio_mask(frame_mask):
    lengths = torch.from_numpy(frame_mask).sum(-1)
    feat = (lengths - 1) // 2 + 1
    pad = torch.arange(1500)[None] >= feat[:, None]
    m = torch.zeros(len(lengths), 1, 1500, 1500)
    m.masked_fill_(pad[:, None, None, :], float("-inf"))
    return m


@pytest.fixture(scope="module", params=SPECS, ids=lambda s: s.name)
def pair(request):
    hf = build_hf_model(request.param, seed=1)
    config, params = jax_twin(hf)
    return hf, config, {"params": params}


@pytest.fixture(scope="module")
def batch():
    return random_batch(np.random.default_rng(0), CLIPS, TEXT)


def test_encoder_and_projector(pair, batch):
    hf, config, params = pair
    _, _, mel, lengths, frame_mask = batch
    with torch.no_grad():
        enc = hf.audio_tower(torch.from_numpy(mel), attention_mask=_hf_audio_mask(frame_mask)).last_hidden_state
        proj = hf.multi_modal_projector(enc)
    model = build_module(config)
    ours_enc = model.apply(params, jnp.asarray(mel), jnp.asarray(lengths), method=lambda m, x, n: m.audio_tower(x, n))
    ours_proj, n_tokens = model.apply(params, jnp.asarray(mel), jnp.asarray(lengths), method="encode_audio")
    _, want_tokens = encoder_lengths(lengths)
    np.testing.assert_array_equal(np.asarray(n_tokens), want_tokens)
    # Only the valid rows are used downstream (padded rows see masked keys only and are discarded).
    for c, n in enumerate(want_tokens):
        np.testing.assert_allclose(np.asarray(ours_enc)[c, :n], enc.numpy()[c, :n], atol=MODULE_ATOL, rtol=0)
        np.testing.assert_allclose(np.asarray(ours_proj)[c, :n], proj.numpy()[c, :n], atol=MODULE_ATOL, rtol=0)


def test_full_model_logits(pair, batch):
    hf, config, params = pair
    tokens, mask, mel, lengths, frame_mask = batch
    positions = np.asarray(positions_from_mask(jnp.asarray(mask)))
    with torch.no_grad():
        want = hf(
            input_ids=torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(mask).long(),
            position_ids=torch.from_numpy(positions).long(),  # what generate() passes for left padding
            input_features=torch.from_numpy(mel),
            feature_attention_mask=torch.from_numpy(frame_mask).long(),
        ).logits.numpy()
    model = build_module(config)
    got = np.asarray(
        model.apply(params, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(mel), jnp.asarray(lengths))
    )
    valid = mask.astype(bool)
    assert got.shape == want.shape
    np.testing.assert_allclose(got[valid], want[valid], atol=LOGITS_ATOL, rtol=0)
    # The audio actually reached the logits: zeroing the mel changes the audio requests only.
    alt = np.asarray(
        model.apply(params, jnp.asarray(tokens), jnp.asarray(mask), jnp.zeros_like(mel), jnp.asarray(lengths))
    )
    assert np.abs(alt[0][valid[0]] - got[0][valid[0]]).max() > 1e-3
    np.testing.assert_allclose(alt[2][valid[2]], got[2][valid[2]], atol=1e-6)


def test_merge_order_matches_masked_scatter(pair, batch):
    """Clip c's rows land in the c-th run of <|AUDIO|> slots, row-major, like torch's masked_scatter."""
    hf, config, params = pair
    tokens, mask, mel, lengths, frame_mask = batch
    model = build_module(config)
    with torch.no_grad():
        enc = hf.audio_tower(torch.from_numpy(mel), attention_mask=_hf_audio_mask(frame_mask)).last_hidden_state
        feats = hf.multi_modal_projector(enc)
        _, n_out = hf.audio_tower._get_feat_extract_output_lengths(torch.from_numpy(lengths).long())
        keep = torch.arange(feats.shape[1])[None, :] < n_out[:, None]
        embeds = hf.get_input_embeddings()(torch.from_numpy(tokens).long())
        slots = (torch.from_numpy(tokens) == config.audio_token_id)[..., None].expand_as(embeds)
        want = embeds.masked_scatter(slots, feats[keep]).numpy()
    got = np.asarray(model.apply(params, jnp.asarray(tokens), jnp.asarray(mel), jnp.asarray(lengths), method="embed"))
    np.testing.assert_allclose(got, want, atol=MODULE_ATOL, rtol=0)
