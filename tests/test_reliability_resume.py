"""Resume after the data file changed (issue 24): a resumed run went on silently on the new data, its saved
data position indexing other examples. The run records its data file's size and SHA-256 when it starts; a resume
on other content is refused in one line naming the file and the way out, however the change kept the file's size
or modification time, and nothing in the run's directory changes. A touch alone (same content) resumes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from qwen_audio_jax.cli.main import main
from qwen_audio_jax.training.resume import DATA_FILE, file_digest
from tests._paths import REPO

SFT = str(REPO / "configs" / "sft_tiny.yaml")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One step of SFT on a 4-example file, then the command that resumes it (to 2 steps)."""
    from tests._model_dirs import build_tiny_model_dir
    from tests._synthetic_prefs import write_preference_set

    root = tmp_path_factory.mktemp("resume")
    build_tiny_model_dir(root / "model")
    data = write_preference_set(root / "d", 4, seed=5, preference=False)
    write_preference_set(root / "other", 4, seed=6, preference=False)
    argv = ["sft", "--config", SFT, "--no-progress", f"model={root / 'model'}", f"data.train={data}"]
    argv += [f"output_dir={root / 'run'}", "train.batch_size=2", "checkpoint.every=1"]
    assert main(argv + ["train.steps=1"]) == 0
    return {"root": root, "data": data, "argv": argv + ["train.steps=2"]}


def _same_size_edit(path):
    path.write_text(path.read_text().replace("white noise", "white nois3"))


def _appended(path):
    with open(path, "a") as f:
        f.write(path.read_text().splitlines()[0].replace('"id": "5-0"', '"id": "5-extra"') + "\n")


def _replaced_by_a_copy(path):  # as `cp -p other data` would: another file, given the old file's times
    shutil.copyfile(path.parent.parent / "other" / "sft.jsonl", path)


CHANGES = {"an edit of the same size": _same_size_edit, "a record appended": _appended}
CHANGES["another file copied over it"] = _replaced_by_a_copy


def _snapshot(root) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("change", list(CHANGES))
def test_resuming_on_changed_data_is_refused(run, capsys, change):
    data = run["data"]
    original, times = data.read_bytes(), os.stat(data)
    before = _snapshot(run["root"] / "run")
    try:
        CHANGES[change](data)
        os.utime(data, ns=(times.st_atime_ns, times.st_mtime_ns))  # the modification time says nothing changed
        capsys.readouterr()
        assert main(run["argv"]) == 2
        lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: data.train {data} is not the data"), lines
        assert "new output_dir" in lines[0] and "original file back" in lines[0]
        assert _snapshot(run["root"] / "run") == before, "a refused resume changed the run's files"
    finally:
        data.write_bytes(original)
        os.utime(data, ns=(times.st_atime_ns, times.st_mtime_ns))


def test_the_same_content_resumes_whatever_its_times(run, capsys):
    """Only the content counts: a touched file resumes (and the run's record names the file it read)."""
    recorded = json.loads((run["root"] / "run" / DATA_FILE).read_text())["data.train"]
    assert recorded["path"] == str(run["data"]) and recorded["bytes"] == run["data"].stat().st_size
    os.utime(run["data"])
    capsys.readouterr()
    assert main(run["argv"]) == 0
    assert "resumed from step 1" in capsys.readouterr().out


def test_the_digest_streams_a_file_larger_than_its_chunks(tmp_path):
    path = tmp_path / "big.jsonl"
    block = b'{"id": "x", "prompt": "' + b"a" * 1000 + b'"}\n'
    path.write_bytes(block * 9000)  # ~9 MB: three reads of 4 MiB
    want = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_digest(path) == {"bytes": path.stat().st_size, "sha256": want}
