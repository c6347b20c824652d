"""The papers' training recipe: SpecAugment (LibriSpeech Basic policy) inside the step, and layer-wise
learning-rate decay for the audio encoder. Resume with augmentation on is in test_training.py."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from qwen_audio_jax.config import tiny
from qwen_audio_jax.model.params import init_params
from qwen_audio_jax.training.optimizer import OptimConfig, make_optimizer
from qwen_audio_jax.training.specaugment import AugmentConfig, spec_augment

C, M, F = 3000, 128, 256


def _masks(cfg: AugmentConfig, lengths: np.ndarray, seed: int = 0) -> np.ndarray:
    """True where spec_augment zeroed a value of an all-ones mel: [C, M, F]."""
    out = spec_augment(jnp.ones((len(lengths), M, F)), jnp.asarray(lengths), jax.random.PRNGKey(seed), cfg)
    return np.asarray(out) == 0.0


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """(start, width) of each run of True in a 1-D bool array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(np.int8), [0]])))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])]


def test_frequency_mask_width_is_uniform_up_to_f():
    lengths = np.full(C, F)
    masked = _masks(AugmentConfig(spec_augment=True, freq_masks=1, time_masks=0), lengths)
    bins = masked[:, :, 0]  # a frequency mask covers every frame
    assert (masked == bins[:, :, None]).all()
    widths = []
    for row in bins:
        runs = _runs(row)
        assert len(runs) <= 1  # one contiguous band
        widths.append(runs[0][1] if runs else 0)
    widths = np.array(widths)
    assert widths.min() == 0 and widths.max() == 27
    assert set(widths) == set(range(28))  # every width in U{0..27} occurs
    assert abs(widths.mean() - 13.5) < 0.6  # the mean of U{0..27}; its standard error here is 0.15
    counts = np.bincount(widths, minlength=28)
    assert counts.min() > 0.5 * C / 28 and counts.max() < 1.5 * C / 28


def test_time_masks_stay_inside_each_clip():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, F + 1, C)
    masked = _masks(AugmentConfig(spec_augment=True, freq_masks=0, time_masks=1), lengths)
    frames = masked[:, 0, :]
    assert (masked == frames[:, None, :]).all()
    widths = []
    for row, n in zip(frames, lengths):
        runs = _runs(row)
        assert len(runs) <= 1
        if runs:
            start, width = runs[0]
            assert start + width <= n  # never in the padding
            assert width <= min(100, n)
        widths.append(runs[0][1] if runs else 0)
    widths = np.array(widths)
    long = lengths >= 100
    assert abs(widths[long].mean() - 50.0) < 1.5  # U{0..100}; standard error ~0.6
    assert widths.max() == 100


def test_full_policy_zeroes_only_masked_values_and_is_seeded():
    rng = np.random.default_rng(1)
    mel = jnp.asarray(rng.standard_normal((64, M, F)).astype(np.float32) + 3.0)  # no natural zeros
    lengths = jnp.asarray(rng.integers(30, F + 1, 64))
    cfg = AugmentConfig(spec_augment=True)
    a = np.asarray(spec_augment(mel, lengths, jax.random.PRNGKey(5), cfg))
    b = np.asarray(spec_augment(mel, lengths, jax.random.PRNGKey(5), cfg))
    c = np.asarray(spec_augment(mel, lengths, jax.random.PRNGKey(6), cfg))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    kept = a != 0
    np.testing.assert_array_equal(a[kept], np.asarray(mel)[kept])
    frac = 1 - kept.mean()
    assert 0.1 < frac < 0.6  # two bands of up to 27 of 128 bins and two of up to 100 frames, overlapping


def _updates(cfg: OptimConfig, params, grads):
    tx, _ = make_optimizer(cfg, total_steps=10, encoder_layers=tiny().audio.num_layers)
    update, state = jax.jit(tx.update), tx.init(params)
    for _ in range(3):  # a few steps, so Adam's moments are not trivial
        updates, state = update(grads, state, params)
    return jax.device_get(updates)


def _setup():
    params = jax.device_get(init_params(tiny(), jax.random.PRNGKey(0)))
    leaves, treedef = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(0)
    grads = jax.tree_util.tree_unflatten(treedef, [rng.standard_normal(x.shape).astype(x.dtype) for x in leaves])
    cfg = OptimConfig(learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=2, freeze_audio_encoder=False)
    return params, grads, cfg


def test_layer_decay_one_is_the_plain_optimizer():
    """decay 1.0 gives exactly what clip + AdamW (the optimizer before layer-wise decay) gives."""
    params, grads, cfg = _setup()
    got = _updates(dataclasses.replace(cfg, encoder_layer_decay=1.0), params, grads)
    lr = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 2, 10, 1e-4)
    mask = jax.tree_util.tree_map_with_path(lambda p, x: p[-1].key in ("kernel", "embedding"), params)
    plain = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=mask),
    )
    update, state = jax.jit(plain.update), plain.init(params)
    for _ in range(3):
        want, state = update(grads, state, params)
    want = jax.device_get(want)
    want["audio_tower"]["embed_positions"] = jnp.zeros_like(want["audio_tower"]["embed_positions"])  # frozen
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=jax.tree_util.keystr(path))


def test_layer_decay_scales_each_encoder_layer():
    """decay d: layer i of L is scaled by d**(L - i), the conv stem by d**(L + 1), the final LayerNorm by d;
    the projector and decoder are untouched."""
    params, grads, cfg = _setup()
    d, layers = 0.8, tiny().audio.num_layers
    base = _updates(dataclasses.replace(cfg, encoder_layer_decay=1.0), params, grads)
    decayed = _updates(dataclasses.replace(cfg, encoder_layer_decay=d), params, grads)
    for (path, u), b in zip(jax.tree_util.tree_leaves_with_path(decayed), jax.tree_util.tree_leaves(base)):
        keys = tuple(k.key for k in path)
        u, b = np.asarray(u), np.asarray(b)
        if keys[0] != "audio_tower" or keys[1] == "embed_positions":
            np.testing.assert_array_equal(u, b, err_msg=str(keys))
        elif keys[1] == "layers":
            for i in range(layers):
                np.testing.assert_allclose(u[i], b[i] * d ** (layers - i), rtol=1e-6, err_msg=str(keys))
        elif keys[1] in ("conv1", "conv2"):
            np.testing.assert_allclose(u, b * d ** (layers + 1), rtol=1e-6, err_msg=str(keys))
        else:
            np.testing.assert_allclose(u, b * d, rtol=1e-6, err_msg=str(keys))
