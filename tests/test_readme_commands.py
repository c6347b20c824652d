"""The README's demo and training commands run verbatim from a fresh clone: the first bash block of the "demo" and
of the "train, sft, dpo" sections is run line by line as a shell would, in a directory laid out like the repository
root (its `configs/` and `qwen_audio_jax/`), and the sample data the training lines name is the one
`qwen_audio_jax/demo/samples.py` builds."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests._paths import REPO


def _section_commands(title: str) -> list[str]:
    """The `qwen-audio-jax ...` lines of the first bash block after the README heading `title` (continuations
    joined, comments dropped)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(f"### {title}\n") :]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    return [" ".join(line.split()) for line in lines if line.startswith("qwen-audio-jax ")]


def test_training_commands_name_files_of_a_fresh_clone():
    commands = _section_commands("train, sft, dpo")
    assert [c.split()[1] for c in commands] == ["sft", "dpo"]
    for command in commands:
        words = command.split()
        paths = [words[words.index("--config") + 1]]
        paths += [w.partition("=")[2] for w in words if w.startswith(("data.train=", "model=qwen_audio_jax/"))]
        assert len(paths) >= 2
        for path in paths:
            assert (REPO / path).exists(), f"{command}: {path} is not in the repository"
    assert "model=runs/s/model" in commands[1] and "output_dir=runs/s" in commands[0]  # dpo starts from sft's model


def test_sample_sets_are_the_built_ones_and_their_clips_exist():
    from qwen_audio_jax.demo.samples import SAMPLE_PREFS, SAMPLE_SFT, sample_records

    sft, prefs = sample_records()
    for path, records in ((SAMPLE_SFT, sft), (SAMPLE_PREFS, prefs)):
        assert [json.loads(line) for line in path.read_text().splitlines()] == records
    assert len(sft) == len(prefs) == 20
    assert all(p["chosen"] != p["rejected"] for p in prefs)
    for record in sft + prefs:
        clips = record.get("audio") or [c["audio"] for c in record["messages"][0]["content"] if "audio" in c]
        assert clips and all((SAMPLE_SFT.parent / clip).is_file() for clip in clips)


def _run_verbatim(commands: list[str], workspace: Path) -> list[subprocess.CompletedProcess]:
    for name in ("configs", "qwen_audio_jax"):
        os.symlink(REPO / name, workspace / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    runs = []
    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=workspace, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        runs.append(done)
    return runs


def test_demo_commands_run_verbatim(tmp_path):
    """The --audio lines ask the bundled clips what their held-out requests asked, so the answers are the ones the
    model gave when it was trained."""
    from qwen_audio_jax.demo.bundle import load_demo_items

    commands = _section_commands("demo")
    words = [shlex.split(c, comments=True) for c in commands]
    assert [w[:3] for w in words] == [["qwen-audio-jax", "demo"]] + [["qwen-audio-jax", "demo", "--audio"]] * 2
    demo, *asked = _run_verbatim(commands, tmp_path)
    assert "[20/20]" in demo.stdout and "full held-out split" in demo.stdout
    items = {(Path(it.clip).name, it.question): it for it in load_demo_items() if "messages" in it.request}
    for argv, done in zip(words[1:], asked, strict=True):
        question = argv[argv.index("--ask") + 1] if "--ask" in argv else "What sound is this?"
        item = items[Path(argv[3]).name, question]
        assert done.stdout.splitlines()[-1] == item.trained_model_output, done.stdout


def test_training_commands_run_verbatim(tmp_path):
    _run_verbatim(_section_commands("train, sft, dpo"), tmp_path)
    for run in ("s", "a"):
        assert (tmp_path / "runs" / run / "model" / "config.json").is_file()
        report = json.loads((tmp_path / "runs" / run / "data_report.json").read_text())
        assert report["kept"] == 20, report
        metrics = [json.loads(line) for line in (tmp_path / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == list(range(1, 11))
    sft, dpo = (
        [json.loads(line) for line in (tmp_path / "runs" / r / "metrics.jsonl").read_text().splitlines()]
        for r in ("s", "a")
    )
    first, last = (sum(m["loss"] for m in ms) / 3 for ms in (sft[:3], sft[-3:]))
    assert last < first / 2  # SFT learned the sample answers
    assert dpo[-1]["loss"] < 0.6 and dpo[-1]["rewards/margins"] > 0.1  # DPO prefers the chosen answers now


def test_lora_commands_and_peft_snippet_run_verbatim(tmp_path):
    """The LoRA section: LoRA-DPO trains adapters only and learns, the adapter and the base export, the demo runs
    the adapted model, and the section's Python block (transformers + PEFT on the exported files) answers what our
    engine answers for the same prompt, clip and adapter."""
    from qwen_audio_jax import api
    from qwen_audio_jax.generation.options import GenerationOptions

    commands = _section_commands("LoRA and QLoRA")
    assert [c.split()[1] for c in commands] == ["dpo", "export-hf", "export-hf", "demo"]
    runs = _run_verbatim(commands, tmp_path)
    metrics = [json.loads(line) for line in (tmp_path / "runs/lora/metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss"] < 0.6 and metrics[-1]["rewards/margins"] > 0.1, metrics[-1]
    assert sorted(p.name for p in (tmp_path / "runs/lora-peft").iterdir() if not p.name.startswith(".")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert "[20/20]" in runs[-1].stdout
    text = (REPO / "README.md").read_text()
    section = text[text.index("### LoRA and QLoRA\n") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    prompt = re.search(r'prompt = "(.*?)"', snippet).group(1)
    clip = re.search(r'librosa.load\("(.*?)"', snippet).group(1)
    model = api.load(tmp_path / "runs/lora/model")
    ours = api.generate(
        model, [{"id": "x", "prompt": prompt, "audio": [str(tmp_path / clip)]}], GenerationOptions(max_new_tokens=24)
    )
    assert done.stdout.strip().splitlines()[-1] == ours[0]["text"].strip(), (done.stdout, ours)
