"""`eval` end to end on the tiny model: generation with the task prompts through the normal engine, the official
scoring, the output files, and identical predictions and scores at batch size 1 and 8."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from qwen_audio_jax.cli.main import main
from tests._model_dirs import tiny_hf_dir, tiny_model_dir  # noqa: F401
from tests._paths import fixture_clips
from tests._requests import synth_clip


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    clips = [str(p) for p in fixture_clips()][:6]
    for i in range(len(clips), 10):  # synthetic clips fill up to 10 (and stand in when ../shared is absent)
        sf.write(root / f"s{i}.wav", synth_clip(0.4 + 0.45 * i, seed=i), 16000)
        clips.append(f"s{i}.wav")  # relative to the manifest
    lines = [
        {
            "id": f"u{i}",
            "audio": c,
            "reference": "Mister Quilter is the apostle of the middle classes.",
            "source": "librispeech_test_clean" if i % 2 else "fleurs_en",
            "language": "en",
        }
        for i, c in enumerate(clips)
    ]
    lines[3]["prompt"] = "Please recognize the speech and only output the recognized content: <|en|>"
    text = "".join(json.dumps(x) + "\n" for x in lines) + '{"id": "broken", "audio": 3}\n'
    (root / "asr.jsonl").write_text(text)
    return root / "asr.jsonl"


def _eval(model_dir, manifest, out, *extra):
    return main(
        [
            "eval",
            "--task",
            "asr",
            "--manifest",
            str(manifest),
            "--model",
            str(model_dir),
            "--output",
            str(out),
            "--no-progress",
            *extra,
        ]
    )


def test_eval_is_identical_at_every_batch_size(tiny_model_dir, manifest, tmp_path, capsys):  # noqa: F811
    assert _eval(tiny_model_dir, manifest, tmp_path / "b1", "--batch-size", "1") == 0
    table = capsys.readouterr().out
    assert _eval(tiny_model_dir, manifest, tmp_path / "b8", "--batch-size", "8") == 0
    preds = lambda d: {
        r["id"]: r["token_ids"] for r in map(json.loads, (d / "predictions.jsonl").read_text().splitlines())
    }  # noqa: E731
    assert preds(tmp_path / "b1") == preds(tmp_path / "b8") and len(preds(tmp_path / "b1")) == 10
    m1 = json.loads((tmp_path / "b1" / "metrics.json").read_text())
    m8 = json.loads((tmp_path / "b8" / "metrics.json").read_text())
    assert m1 == m8
    assert m1["task"] == "asr" and set(m1["sources"]) == {"librispeech_test_clean", "fleurs_en"}
    assert m1["overall"]["count"] == 10 and 0 <= m1["overall"]["wer"]
    assert sum(s["count"] for s in m1["sources"].values()) == 10
    assert (tmp_path / "b1" / "errors.jsonl").exists()
    assert "wer" in table.lower() and "librispeech_test_clean" in table
    # The malformed manifest line is reported and counted, never silently dropped.
    assert m1["problems"]["manifest"]["count"] == 1 and m1["problems"]["manifest"]["lines"][0]["id"] == "broken"
    assert m1["normalizer"]["en"].startswith("remove_sp -> whisper EnglishTextNormalizer")
    # A line's own prompt is used as given.
    req = {r["id"]: r for r in map(json.loads, (tmp_path / "b1" / "requests.jsonl").read_text().splitlines())}
    assert req["u3"]["prompt"].endswith("only output the recognized content: <|en|>")
    assert req["u0"]["task"] == "asr"


def test_eval_scores_existing_predictions_without_a_model(manifest, tmp_path, capsys):
    preds = tmp_path / "results.jsonl"
    lines = [
        {"id": f"u{i}", "text": "mister quilter is the apostle of the middle classes", "error": None} for i in range(9)
    ] + [{"id": "u9", "text": None, "error": "clip missing"}]
    preds.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert (
        main(
            [
                "eval",
                "--task",
                "asr",
                "--manifest",
                str(manifest),
                "--predictions",
                str(preds),
                "--output",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    # 9 perfect hypotheses (the normaliser removes case and the final period) and one missing (9 deletions):
    # corpus WER = 9 / (10 x 9 words).
    assert m["overall"]["wer"] == pytest.approx(9 / 90)
    assert "u9" in (tmp_path / "out" / "errors.jsonl").read_text()
