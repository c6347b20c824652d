"""Reading generation results, and writing / printing scores.

* ``read_predictions``: the JSONL that ``qwen-audio-jax generate`` writes ({"id", "text", "error", ...} per line),
  read with the manifest's tolerant rules: bad lines are kept in ``.problems``, never silently dropped.
* ``write_outputs``: ``metrics.json`` (``EvalResult.to_json``) and ``errors.jsonl`` (one example per line: the
  wrong or missing ones for asr / ser / vsc / aqa, every example for s2tt and caption, which have no per-example
  verdict), both written atomically (temporary file + rename), so a reader never sees half a file.
* ``format_table``: a terminal table; WER and accuracy as percentages, BLEU on sacreBLEU's 0-100 scale, caption
  metrics on the COCO 0-1 scale (as papers print CIDEr).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from qwen_audio_jax.errors import DataError
from qwen_audio_jax.eval.manifest import ManifestProblem, read_jsonl_objects
from qwen_audio_jax.eval.scoring import METRIC_OF_TASK, EvalResult, score_predictions

__all__ = ["EvalResult", "Predictions", "format_table", "read_predictions", "score_predictions", "write_outputs"]


class Predictions(dict):
    """id -> predicted text, or None where generation failed; ``problems`` lists the unusable lines."""

    def __init__(self, *args, problems: list[ManifestProblem] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.problems: list[ManifestProblem] = list(problems or [])


def read_predictions(path: str | Path) -> Predictions:
    """Reads generation results. A line with a non-null "error" maps its id to None (a failed generation, scored
    as missing); otherwise "text" must be a string. Unusable lines (bad JSON or UTF-8, no string id, no text, a
    repeated id: the first one wins) go to ``.problems``. Raises DataError for a missing file or no usable line."""
    path = Path(path)
    preds = Predictions()
    lines: dict[str, int] = {}
    for n, obj, problem in read_jsonl_objects(path, "predictions file"):
        if problem is not None:
            preds.problems.append(problem)
            continue
        rid = obj.get("id")
        if not isinstance(rid, str) or not rid:
            preds.problems.append(
                ManifestProblem(
                    n,
                    None,
                    f'{path.name} line {n} has no string "id"; every result needs the id of its manifest entry.',
                )
            )
            continue
        if rid in lines:
            preds.problems.append(
                ManifestProblem(
                    n,
                    rid,
                    f"{path.name} line {n}: id {rid!r} already has a result on "
                    f"line {lines[rid]}; the first one is used.",
                )
            )
            continue
        text, error = obj.get("text"), obj.get("error")
        if error is None and not isinstance(text, str):
            preds.problems.append(
                ManifestProblem(
                    n, rid, f'{path.name} line {n}: "text" must be a string when "error" is null; fix the line.'
                )
            )
            continue
        lines[rid] = n
        preds[rid] = None if error is not None else text
    if not preds:
        first = f"; the first problem: {preds.problems[0].message}" if preds.problems else ""
        raise DataError(f"{path} has no usable result line{first.rstrip('.')}; check that it is a generate output.")
    return preds


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _is_error(example: dict) -> bool:
    if example.get("missing"):
        return True
    if "errors" in example:
        return example["errors"] > 0
    if "correct" in example:
        return not example["correct"]
    return True  # s2tt / caption: no per-example verdict, every example is listed


def write_outputs(result: EvalResult, out_dir: str | Path) -> None:
    """Writes ``out_dir/metrics.json`` and ``out_dir/errors.jsonl`` (creating ``out_dir``)."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"Cannot create the output folder {out_dir} ({e.strerror}); choose a writable path.") from e
    _atomic_write(out_dir / "metrics.json", json.dumps(result.to_json(), ensure_ascii=False, indent=2) + "\n")
    lines = [json.dumps(ex, ensure_ascii=False) + "\n" for ex in result.examples if _is_error(ex)]
    _atomic_write(out_dir / "errors.jsonl", "".join(lines))


def _fmt(metric: str, value) -> str:
    if value is None:
        return "n/a"
    if metric in ("wer", "accuracy", "yes_no_accuracy"):
        return f"{100 * value:.2f}%"
    if metric == "bleu":
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_table(result: EvalResult) -> str:
    """A plain-text table: one row per source, then the overall row, then counts of missing and bad lines."""
    metrics = [k for k in result.overall if k != "count"]
    for row in result.sources.values():
        metrics += [k for k in row if k not in metrics and k != "count"]
    header = ["source", "count", *metrics]
    rows = [[name, str(row["count"]), *(_fmt(m, row.get(m)) for m in metrics)] for name, row in result.sources.items()]
    rows.append(["overall", str(result.overall["count"]), *(_fmt(m, result.overall.get(m)) for m in metrics)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [
        f"{result.task} ({result.variant}): {METRIC_OF_TASK[result.task]}",
        line(header),
        "  ".join("-" * w for w in widths),
    ]
    out += [line(r) for r in rows[:-1]] + ["  ".join("-" * w for w in widths), line(rows[-1])]
    out.append(
        f"missing predictions: {len(result.missing)}; bad manifest lines: {len(result.problems)}; "
        f"bad prediction lines: {len(result.prediction_problems)}; "
        f"predictions not in the manifest: {len(result.unmatched_predictions)}"
    )
    if result.not_computed:
        out.append(f"not computed: {', '.join(result.not_computed)}")
    out += [f"note: {n}" for n in result.notes]
    return "\n".join(out)
