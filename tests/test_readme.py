"""The README's Python snippets run as written, in a workspace holding the files they name: `models/...` (a tiny
converted model), `hf/...` (a tiny Hugging Face checkpoint), `clips/*` (generated audio), `data/*` (a manifest)."""

from __future__ import annotations

import json
import os
import re

import pytest
import soundfile as sf

from tests._model_dirs import tiny_hf_dir, tiny_model_dir  # noqa: F401
from tests._paths import REPO
from tests._requests import synth_clip

BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _snippets() -> list[str]:
    """Every Python block but the LoRA section's, which reads the files that section's commands write:
    tests/test_readme_commands.py runs it after them."""
    text = (REPO / "README.md").read_text()
    start = text.index("### LoRA and QLoRA\n")
    lora = set(BLOCK.findall(text[start : text.index("\n### ", start + 1)]))
    return [block for block in BLOCK.findall(text) if block not in lora]


def test_readme_has_python_snippets():
    assert len(_snippets()) >= 3


@pytest.fixture()
def workspace(tmp_path, monkeypatch, tiny_model_dir, tiny_hf_dir):  # noqa: F811
    (tmp_path / "models").mkdir()
    (tmp_path / "hf").mkdir()
    os.symlink(tiny_model_dir, tmp_path / "models" / "qwen2-audio-7b-instruct")
    os.symlink(tiny_hf_dir, tmp_path / "hf" / "Qwen2-Audio-7B-Instruct")
    (tmp_path / "clips").mkdir()
    sf.write(tmp_path / "clips" / "glass.wav", synth_clip(2.0, 1), 16000)
    sf.write(tmp_path / "clips" / "speech.flac", synth_clip(3.0, 2), 16000)
    (tmp_path / "data").mkdir()
    line = {"id": "1", "audio": "../clips/speech.flac", "reference": "hello world", "source": "demo", "language": "en"}
    (tmp_path / "data" / "asr.jsonl").write_text(json.dumps(line) + "\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("index", range(len(_snippets())))
def test_readme_snippet_runs(workspace, index, capsys):
    code = _snippets()[index]
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
