"""Conversion throughput and peak memory on a synthetic sharded checkpoint (>= 2 GB).

Writes a random-weight Qwen2-Audio checkpoint (real 156,032 vocab, reduced widths, fp32, ~2.3 GB in 1 GB
shards), then in fresh subprocesses measures
  * `qwen-audio-jax convert` (float32 out): seconds, MB/s, peak RSS;
  * the PyTorch reference doing the same read: transformers `from_pretrained` of the same directory;
and checks the streaming bound: peak RSS < 2 x (largest stacked param group) + 1 GB.
Prints one JSON line.

    python benchmarks/convert.py [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HF_CONFIG = {
    "architectures": ["Qwen2AudioForConditionalGeneration"],
    "model_type": "qwen2_audio",
    "audio_token_index": 151646,
    "audio_config": {
        "model_type": "qwen2_audio_encoder",
        "d_model": 512,
        "encoder_layers": 8,
        "encoder_attention_heads": 8,
        "encoder_ffn_dim": 2048,
        "num_mel_bins": 128,
        "max_source_positions": 1500,
    },
    "text_config": {
        "model_type": "qwen2",
        "vocab_size": 156032,
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": False,
    },
}


def write_synthetic(directory: Path, shard_bytes: int = 1 << 30) -> int:
    """Random tensors with the exact HF names/shapes, streamed into shards. Returns total bytes."""
    from flax import traverse_util

    from qwen_audio_jax.conversion.hf_config import from_hf_config
    from qwen_audio_jax.conversion.name_map import hf_shape, qwen2_audio_rules
    from qwen_audio_jax.conversion.safetensors_io import write_safetensors
    from qwen_audio_jax.model.params import abstract_params

    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(HF_CONFIG))
    config = from_hf_config(HF_CONFIG)
    shapes = traverse_util.flatten_dict(abstract_params(config), sep="/")
    rng = np.random.default_rng(0)
    pending, pending_bytes, shards, weight_map, total = {}, 0, [], {}, 0

    def flush():
        nonlocal pending, pending_bytes
        name = f"model-{len(shards) + 1:05d}.safetensors"
        write_safetensors(directory / name, pending)
        shards.append(name)
        weight_map.update({k: name for k in pending})
        pending, pending_bytes = {}, 0

    for rule in qwen2_audio_rules(config):
        shape = shapes[rule.target].shape
        per = hf_shape(rule, shape[1:] if rule.num_layers else shape)
        for name in rule.source_names():
            x = rng.standard_normal(per, dtype=np.float32) * 0.02
            if pending and pending_bytes + x.nbytes > shard_bytes:
                flush()
            pending[name] = x
            pending_bytes += x.nbytes
            total += x.nbytes
    flush()
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return total


def largest_group_bytes(directory: Path) -> int:
    import jax

    from qwen_audio_jax.conversion.hf_config import from_hf_config
    from qwen_audio_jax.model.params import abstract_params

    config = from_hf_config(json.loads((directory / "config.json").read_text()))
    return max(int(np.prod(x.shape)) * 4 for x in jax.tree_util.tree_leaves(abstract_params(config)))


# Peak RSS from VmHWM: unlike ru_maxrss, it belongs to the exec'd process alone (ru_maxrss survives fork+exec
# and would report the parent's peak).
_CHILD = """
import sys, time, json
t = time.perf_counter()
{body}
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(json.dumps({{"seconds": time.perf_counter() - t, "peak_rss": int(hwm) * 1024}}))
"""


def run_child(body: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD.format(body=body)],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        cwd=REPO,
    )
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="qaj-convert-bench-"))
    src, dst = work / "hf", work / "jax"
    try:
        total = write_synthetic(src)
        group = largest_group_bytes(src)
        ours = run_child(
            f"from qwen_audio_jax.conversion.hf_to_jax import convert\n"
            f"convert({str(src)!r}, {str(dst)!r}, progress=False, log=lambda m: None)"
        )
        ref = run_child(
            "import torch\nfrom transformers import Qwen2AudioForConditionalGeneration\n"
            f"Qwen2AudioForConditionalGeneration.from_pretrained({str(src)!r}, torch_dtype=torch.float32)"
        )
        bound = 2 * group + (1 << 30)
        print(
            json.dumps(
                {
                    "benchmark": "convert",
                    "checkpoint_bytes": total,
                    "largest_group_bytes": group,
                    "jax_convert_s": round(ours["seconds"], 2),
                    "jax_convert_MBps": round(total / 1e6 / ours["seconds"], 1),
                    "jax_peak_rss_bytes": ours["peak_rss"],
                    "rss_bound_bytes": bound,
                    "rss_within_bound": ours["peak_rss"] < bound,
                    "reference": "transformers from_pretrained (load only)",
                    "reference_s": round(ref["seconds"], 2),
                    "reference_peak_rss_bytes": ref["peak_rss"],
                    "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.system()}",
                }
            )
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
