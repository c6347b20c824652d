"""Curated, lazily imported package exports (PEP 562), shared by the package `__init__` files.

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {"load": "qwen_audio_jax.api", ...})

An export's module is imported on first access, so importing a package costs nothing until a name is used;
in particular `qwen-audio-jax --help` and usage errors never import jax.
"""

from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, exports: dict[str, str]):
    """(__getattr__, __dir__, __all__) for `package`, exporting each name from the module it maps to."""

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__, sorted(exports)
