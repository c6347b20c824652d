"""Where the shared fixtures live. CI has ../shared beside the clone; a user's clone may not (tests that need
the real clips skip with a reason, everything else generates its own audio)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QWEN_AUDIO_JAX_SHARED", REPO.parent / "shared"))
FIXTURE_AUDIO = SHARED / "fixtures" / "audio"
MEL_FILTERS_NPZ = SHARED / "fixtures" / "mel_filters.npz"


def fixture_clips() -> list[Path]:
    """All real clips in ../shared/fixtures/audio (empty if absent)."""
    if not FIXTURE_AUDIO.is_dir():
        return []
    return sorted(p for p in FIXTURE_AUDIO.iterdir() if p.is_file())


def require_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present (it ships in ../shared beside CI's clone)")
    return path
