"""Training numbers (issue 24): a NaN or an infinity in a run config passed every range check (a comparison with
NaN is false) and was caught only after a step, or never (`optim.clip_norm=nan` changed the result); an integer
past int32 overflowed on the device. Each is refused when the config is read: one line naming the key, exit 2,
before anything loads, and nothing is written."""

from __future__ import annotations

import pytest

from qwen_audio_jax.cli.main import main
from qwen_audio_jax.errors import ConfigError
from qwen_audio_jax.training.run_config import load_run_config
from tests._paths import REPO

DPO = str(REPO / "configs" / "dpo_tiny.yaml")

NON_FINITE = [
    ("optim.clip_norm", "nan"),
    ("optim.clip_norm", ".inf"),
    ("optim.learning_rate", ".nan"),
    ("optim.learning_rate", "-.inf"),
    ("optim.min_learning_rate", "inf"),
    ("optim.weight_decay", "nan"),
    ("optim.b1", "nan"),
    ("optim.b2", ".inf"),
    ("optim.eps", "nan"),
    ("optim.encoder_lr_multiplier", "nan"),
    ("optim.encoder_layer_decay", "nan"),
    ("loss.beta", "nan"),
    ("loss.beta", "1e999"),
    ("loss.label_smoothing", "nan"),
    ("loss.weights", "[1.0, .nan]"),
    ("loss.weights", "[.inf]"),
]
PAST_INT32 = [
    ("train.seed", "99999999999"),
    ("train.steps", "4294967296"),
    ("train.batch_size", "99999999999"),
    ("data.max_length", "99999999999"),
    ("checkpoint.every", "99999999999"),
]


@pytest.mark.parametrize("key, raw", NON_FINITE + PAST_INT32)
def test_a_bad_number_is_refused_when_the_config_is_read(key, raw):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        load_run_config(DPO, [f"{key}={raw}"])
    assert "finite" in str(err.value) or "out of range" in str(err.value)


@pytest.mark.parametrize("key, raw", [NON_FINITE[0], NON_FINITE[2], NON_FINITE[11], PAST_INT32[0]])
def test_the_command_says_it_in_one_line_and_writes_nothing(tmp_path, capsys, key, raw):
    out = tmp_path / "run"
    capsys.readouterr()
    status = main(["dpo", "--config", DPO, "model=m", "data.train=d.jsonl", f"output_dir={out}", f"{key}={raw}"])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], err
    assert not out.exists()


@pytest.mark.parametrize(
    "key, raw, value",
    [
        ("optim.clip_norm", "0", 0.0),
        ("optim.learning_rate", "1e-3", 1e-3),
        ("loss.beta", "0.2", 0.2),
        ("train.seed", str(2**31 - 1), 2**31 - 1),
        ("loss.weights", "[0.5]", (0.5,)),
    ],
)
def test_finite_values_in_range_still_pass(key, raw, value):
    cfg = load_run_config(DPO, [f"{key}={raw}"])
    section, name = key.split(".")
    assert getattr(getattr(cfg, section), name) == value
