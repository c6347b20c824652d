"""A missing oracle skips on a developer's machine and fails under CI's $QWEN_AUDIO_JAX_REQUIRE_ORACLES."""

import pytest

from tests._oracles import REQUIRE_ENV, missing, require, require_binary


def test_missing_oracle_skips_without_the_variable(monkeypatch):
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_such_module_xyz"):
        require("no_such_module_xyz", "an oracle")
    with pytest.raises(pytest.skip.Exception, match="no-such-binary-xyz"):
        require_binary("no-such-binary-xyz", "an oracle")


@pytest.mark.parametrize("value", ["1", "true"])
def test_missing_oracle_fails_under_the_variable(monkeypatch, value):
    monkeypatch.setenv(REQUIRE_ENV, value)
    with pytest.raises(pytest.fail.Exception, match="oracle missing: .*no_such_module_xyz"):
        require("no_such_module_xyz", "an oracle")
    with pytest.raises(pytest.fail.Exception, match="no-such-binary-xyz"):
        require_binary("no-such-binary-xyz", "an oracle")
    with pytest.raises(pytest.fail.Exception):
        missing("anything")


def test_present_oracles_are_returned(monkeypatch):
    monkeypatch.setenv(REQUIRE_ENV, "1")
    assert require("json", "a module").dumps([1]) == "[1]"
    assert require_binary("sh", "a shell").endswith("sh")
