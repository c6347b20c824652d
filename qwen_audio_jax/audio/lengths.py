"""Clip lengths through the audio encoder: mel frames -> conv2 outputs -> audio tokens.

One formula, written once, for Python ints (the processor expanding `<|AUDIO|>` placeholders) and for
integer arrays (the encoder's key mask and the audio merge): the operators below work on both.

    L mel frames --conv2 (stride 2)--> (L - 1) // 2 + 1 --AvgPool(2, 2)--> (that - 2) // 2 + 1 audio tokens

This is transformers' `_get_feat_extract_output_lengths` and Qwen-Audio v1's `get_T_after_cnn` followed by
its `audio_token_num` (docs/reference.md §1.4); a 30 s clip (3000 frames) gives 1500 and 750.
"""

from __future__ import annotations


def encoder_lengths(mel_lengths):
    """(positions after conv2, audio tokens after the pool) for mel lengths L (an int or an int array)."""
    after_conv = (mel_lengths - 1) // 2 + 1
    return after_conv, (after_conv - 2) // 2 + 1


def num_audio_tokens(mel_length: int) -> int:
    """Audio tokens N of one clip of L mel frames (python int): the `<|AUDIO|>` copies its placeholder becomes."""
    return int(encoder_lengths(int(mel_length))[1])
