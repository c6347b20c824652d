"""Training numbers (issue 24): a NaN or an infinity in a run config passed every range check (a comparison with
NaN is false) and was caught only after a step, or never (`optim.clip_norm=nan` changed the result); an integer
past int32 overflowed on the device. Each is refused when the config is read: one line naming the key, exit 2,
before anything loads, and nothing is written. A step that still produces non-finite numbers stops before it is
saved, names a checkpoint that holds finite weights, and its advice works when followed."""

from __future__ import annotations

import shutil

import jax
import numpy as np
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
    ("optim.learning_rate", "1e39"),  # finite in Python, infinite in float32 on the device
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


# ---- a step with non-finite numbers --------------------------------------------------------------------------------
# The probes: the check ran before the update was saved, so the "last good checkpoint" named after a NaN
# update held NaN weights; and the advice it printed (resume with a lower learning rate) was refused by the resume
# check. Each case runs on the tiny model, checks the named checkpoint, then follows the advice as printed.
SFT = str(REPO / "configs" / "sft_tiny.yaml")
BASE = ["train.batch_size=2", "checkpoint.every=1", "checkpoint.keep=5", "optim.weight_decay=0.5"]
BASE += ["optim.warmup_steps=0"]
LOWER = ["optim.learning_rate=3e-3", "optim.min_learning_rate=3e-4"]
STEP_CASES = {
    # 3.4e38 x (1 + decay x weight) is past float32: finite loss and gradients, non-finite weights.
    "the update overflows": (True, ["optim.learning_rate=3.4e38", "optim.min_learning_rate=3.4e38"], 3, 2),
    # 1e30 weights are finite, the next forward pass is not: that checkpoint is no place to resume from.
    "the weights blow up": (True, ["optim.learning_rate=1e30", "optim.min_learning_rate=1e29"], 4, 2),
    "from the first step": (False, ["optim.learning_rate=1e30", "optim.min_learning_rate=1e29"], 2, None),
}


@pytest.fixture(scope="module")
def sft_ws(tmp_path_factory):
    from tests._model_dirs import build_tiny_model_dir
    from tests._synthetic_prefs import write_preference_set

    root = tmp_path_factory.mktemp("nonfinite")
    build_tiny_model_dir(root / "model")
    write_preference_set(root / "d", 4, seed=5, preference=False)
    assert main(_sft_argv(root, root / "base") + ["train.steps=2"]) == 0  # two good steps, copied by the cases
    return root


def _sft_argv(root, out) -> list[str]:
    argv = ["sft", "--config", SFT, "--no-progress", f"model={root / 'model'}"]
    return argv + [f"data.train={root / 'd' / 'sft.jsonl'}", f"output_dir={out}", *BASE]


def _finite_params(step_dir) -> bool:
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(step_dir.parent)
    restored = manager.restore(
        int(step_dir.name), args=ocp.args.Composite(state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore())
    )
    manager.close()
    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(restored["state"]["params"]))


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_a_non_finite_step_names_a_good_checkpoint_and_its_advice_works(sft_ws, tmp_path, capsys, case):
    from qwen_audio_jax.checkpoint.model_dir import load_params
    from qwen_audio_jax.training.checkpointing import saved_steps

    resumed, huge, failing, good = STEP_CASES[case]
    out = tmp_path / "run"
    argv = _sft_argv(sft_ws, out)
    if resumed:
        shutil.copytree(sft_ws / "base", out)
    capsys.readouterr()
    assert main(argv + ["train.steps=4", *huge]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: step {failing}: "), lines
    said = lines[0]
    assert "optim.learning_rate" in said and "Run the same command again with a lower" in said
    if good is None:
        assert "no checkpoint was saved" in said and saved_steps(out / "checkpoints") == []
    else:
        assert f"the last good checkpoint is step {good} in {out / 'checkpoints'}" in said
        assert saved_steps(out / "checkpoints") == list(range(1, good + 1)), "nothing after it is left to resume"
        assert _finite_params(out / "checkpoints" / str(good))
    # The advice, followed as printed: the same command with a lower learning rate goes on from there.
    assert main(argv + ["train.steps=4", *LOWER]) == 0
    stdout = capsys.readouterr().out
    assert (f"resumed from step {good}" in stdout) == (good is not None), stdout
    final = load_params(out / "model")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(final))
