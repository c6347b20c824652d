"""Typed user-facing errors.

Every error a user can cause (a bad file, a bad config, a bad request) is one of these. Their message is one
sentence that names the input and says how to fix it; the CLI prints it without a traceback and exits non-zero.
"""


class QwenAudioError(Exception):
    """Base class: an error caused by the user's input, with a message fit to print as is."""


class ConfigError(QwenAudioError):
    """A model or run configuration the port does not support or cannot parse."""


class CheckpointError(QwenAudioError):
    """A checkpoint directory that is missing, corrupt, or does not match the model."""


class AudioError(QwenAudioError):
    """An audio input that cannot be loaded or is unusable (missing, corrupt, empty, NaN...)."""


class PromptError(QwenAudioError):
    """A prompt or conversation that cannot be turned into model inputs (placeholder mismatch, too long...)."""


class DataError(QwenAudioError):
    """A dataset file or record that cannot be used."""


class OutputError(QwenAudioError):
    """An output path that would destroy an input or something this tool did not write, or cannot be written."""
