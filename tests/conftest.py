import os
import shutil
import tempfile

# Tests run on the CPU in fp32.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_ENABLE_X64", "0")

# One persistent compilation cache for the whole session: the xdist workers and every subprocess (CLI runs,
# mesh and multi-host workers) inherit it, so the tiny models' programs compile once per test run instead of
# once per test. Fresh per run (no stale entries); a test that needs its own setting passes `--compilation-cache`.
from qwen_audio_jax.runtime import CACHE_ENV, setup_compilation_cache  # noqa: E402

_OWN_CACHE = CACHE_ENV not in os.environ
if _OWN_CACHE:
    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="qwen-audio-jax-test-xla-")
setup_compilation_cache()


def pytest_sessionstart(session):
    """Under $QWEN_AUDIO_JAX_REQUIRE_ORACLES (CI), a missing oracle stops the run before any test can skip for it,
    wherever that skip is written (tests/_oracles.py)."""
    from tests._oracles import REQUIRE_ENV, missing_oracles, required

    gone = missing_oracles() if required() else []
    if gone:
        import pytest

        pytest.exit(f"oracles missing: {', '.join(gone)} (${REQUIRE_ENV} is set; see .ci/run)", returncode=3)


def pytest_sessionfinish(session):
    if _OWN_CACHE:  # this process made it (xdist workers inherit the controller's)
        shutil.rmtree(os.environ[CACHE_ENV], ignore_errors=True)
