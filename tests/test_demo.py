"""`qwen-audio-jax demo` runs the whole path with no download; the bundled tokenizer is the real one."""

import gzip
import json

from qwen_audio_jax.bundled import ASSETS
from qwen_audio_jax.cli.main import main
from tests._tokenizer_dirs import qwen2_bpe_files


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "[5/5]" in out
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(results) == 6
    by_id = {r["id"]: r for r in results}
    assert "missing.wav" in by_id["broken"]["error"]
    assert all(r["error"] is None and len(r["token_ids"]) > 0 for k, r in by_id.items() if k != "broken")
    assert (tmp_path / "hf-checkpoint" / "model.safetensors").exists()
    assert (tmp_path / "model" / "params").is_dir()


def test_bundled_bpe_equals_registry_files():
    vocab, merges = qwen2_bpe_files()
    assert gzip.decompress((ASSETS / "qwen2_tokenizer" / "vocab.json.gz").read_bytes()) == vocab.read_bytes()
    assert gzip.decompress((ASSETS / "qwen2_tokenizer" / "merges.txt.gz").read_bytes()) == merges.read_bytes()
