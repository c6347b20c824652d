"""PEFT LoRA adapter directories, in and out: `adapter_config.json` + `adapter_model.safetensors` with PEFT's names.

    base_model.model.<HF module>.lora_A.weight   [r, in]      (ours: lora_a [in, r] = A.T)
    base_model.model.<HF module>.lora_B.weight   [out, r]     (ours: lora_b [r, out] = B.T)

The HF module names come from the converter's name map (conversion/name_map.py), so every linear layer the map
knows can be read: an adapter made by LLaMA-Factory, ms-swift or `peft.get_peft_model` on transformers'
Qwen2AudioForConditionalGeneration (or Qwen-Audio's QWenLMHeadModel) loads whatever its target_modules were,
rank_pattern / alpha_pattern / rsLoRA / layers_to_transform included. What cannot be expressed as W + s * B A
(DoRA, trained biases, modules_to_save, other PEFT types) is refused with the reason.

Reading gives per-kernel low-rank factors (`KernelDelta`: ranks padded with zeros, the scale folded into B,
layers without an adapter all zeros), which `model/lora.py merge_deltas` adds to the kernels at load.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
from flax import traverse_util

from qwen_audio_jax.checkpoint.model_dir import read_model_dir_config
from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.conversion.name_map import ParamRule, rules_for
from qwen_audio_jax.conversion.safetensors_io import SafetensorsFile, write_safetensors
from qwen_audio_jax.errors import CheckpointError
from qwen_audio_jax.model.lora import LoraSpec
from qwen_audio_jax.model.params import abstract_params

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."
FUSED = "c_attn"  # our adapter module for v1's fused q|k|v (model/lora.py FusedLora)


@dataclasses.dataclass(frozen=True)
class KernelDelta:
    """A low-rank update of one kernel (stacked or not): kernel += a @ b. a [L?, in, R], b [L?, R, out], fp32."""

    a: np.ndarray
    b: np.ndarray


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def _modules(config: ModelConfig) -> dict[str, list[ParamRule]]:
    """HF module name pattern ("...layers.{i}.self_attn.q_proj") -> the kernel rules it feeds (3 for c_attn)."""
    out: dict[str, list[ParamRule]] = {}
    for rule in rules_for(config):
        if rule.transform == "linear":
            out.setdefault(rule.source.removesuffix(".weight"), []).append(rule)
    return out


def _parse_key(key: str, patterns: dict[str, re.Pattern]) -> tuple[str, int | None, str]:
    """(module pattern, layer index or None, "A" | "B") of a PEFT tensor name."""
    m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight", key)
    if m is None:
        raise CheckpointError(f"{key}: not a LoRA weight (only lora_A / lora_B tensors are supported).")
    name, which = m.groups()
    for pattern, rx in patterns.items():
        hit = rx.fullmatch(name)
        if hit:
            return pattern, int(hit.group(1)) if hit.groups() else None, which
    raise CheckpointError(f"{key}: {name} is not a linear layer of this model (is the adapter for another model?).")


def is_adapter_only(path: str | Path) -> bool:
    """An adapter dir without a model of its own (a LoRA run's OUTPUT/model, PEFT's save_pretrained)."""
    return is_adapter_dir(path) and not (Path(path) / "config.json").is_file()


def check_adapter_dir(path: str | Path) -> Path:
    """`path` made absolute, or one CheckpointError saying what it is not."""
    path = Path(path).absolute()
    if not path.is_dir():
        raise CheckpointError(f"--adapter {path}: no such directory; pass a PEFT LoRA adapter directory.")
    if not is_adapter_dir(path):
        raise CheckpointError(
            f"--adapter {path}: no {CONFIG_FILE}; pass a PEFT LoRA adapter directory (as PEFT's save_pretrained "
            "and a LoRA training run write it)."
        )
    return path


def adapter_base(directory: str | Path, fix: str) -> Path:
    """The model dir an adapter dir names as its base (base_model_name_or_path: a LoRA training run writes the
    model dir it trained on). `fix` ends the error when it names none here."""
    directory = Path(directory).absolute()
    base = read_adapter_config(directory).get("base_model_name_or_path") or ""
    if base:
        try:
            read_model_dir_config(base)
            return Path(base).absolute()
        except CheckpointError:
            pass
    raise CheckpointError(
        f"{directory} is a LoRA adapter whose base model {base or None!r} is not a qwen-audio-jax model dir here; {fix}"
    )


def read_adapter_config(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read the adapter config ({e}).") from e
    if doc.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{path}: peft_type {doc.get('peft_type')!r}; only LoRA adapters are supported.")
    refused = {
        "use_dora": "DoRA adapters change the weight norm, not W + BA",
        "fan_in_fan_out": "fan_in_fan_out (Conv1D-style weights) is not used by these models",
    }
    for key, why in refused.items():
        if doc.get(key):
            raise CheckpointError(f"{path}: {key} is set; not supported ({why}).")
    if doc.get("bias", "none") != "none":
        raise CheckpointError(f"{path}: bias={doc['bias']!r}: adapters with trained biases are not supported.")
    if doc.get("modules_to_save"):
        raise CheckpointError(
            f"{path}: modules_to_save {doc['modules_to_save']} (fully trained modules) are not supported; "
            "merge the adapter with PEFT (merge_and_unload), save the model and convert it instead."
        )
    return doc


def _scale(doc: dict, module: str, rank: int) -> float:
    """PEFT's scaling for one module: alpha / r (rsLoRA: alpha / sqrt(r)), with alpha_pattern's override."""
    alpha = doc.get("lora_alpha", 8)
    for pattern, value in (doc.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?{pattern}", module):
            alpha = value
            break
    return alpha / (rank**0.5 if doc.get("use_rslora") else rank)


def read_adapter(directory: str | Path, config: ModelConfig) -> dict[tuple[str, ...], KernelDelta]:
    """{kernel path: KernelDelta} for every kernel the PEFT adapter in `directory` changes."""
    directory = Path(directory)
    doc = read_adapter_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        other = (
            " (adapter_model.bin: load and save it with PEFT to get safetensors)"
            if (directory / "adapter_model.bin").is_file()
            else ""
        )
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE}{other}.")
    modules = _modules(config)
    patterns = {p: re.compile(re.escape(p).replace(re.escape("{i}"), r"(\d+)")) for p in modules}
    file = SafetensorsFile(weights)
    found: dict[tuple[str, int | None], dict[str, np.ndarray]] = {}
    for key in file.names():
        pattern, layer, which = _parse_key(key, patterns)
        found.setdefault((pattern, layer), {})[which] = np.asarray(file.read(key), np.float32)
    shapes = traverse_util.flatten_dict(abstract_params(config))
    per_kernel: dict[tuple[str, ...], dict[int | None, tuple[np.ndarray, np.ndarray]]] = {}
    for (pattern, layer), ab in found.items():
        module = pattern.format(i=layer) if layer is not None else pattern
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{weights}: {module} has lora_{'A' if 'A' in ab else 'B'} only.")
        a, b = ab["A"], ab["B"]  # [r, in], [out, r]
        rules = modules[pattern]
        _check_fits(weights, module, a, b, layer, rules, shapes)
        b = b * _scale(doc, module, a.shape[0])
        for rule in rules:
            part = b if rule.part is None else np.split(b, rule.part[1], axis=0)[rule.part[0]]
            per_kernel.setdefault(tuple(rule.target.split("/")), {})[layer] = (a.T, part.T)
    return {path: _stack(path, layers, modules, config) for path, layers in per_kernel.items()}


def _check_fits(weights: Path, module: str, a, b, layer, rules: list[ParamRule], shapes: dict) -> None:
    """An adapter made for another model (other widths, more layers) is refused before anything is merged."""
    d_in, d_out = shapes[tuple(rules[0].target.split("/"))].shape[-2:]
    d_out *= len(rules)  # v1's fused c_attn: q | k | v row blocks
    n = rules[0].num_layers
    if (
        a.ndim != 2
        or b.ndim != 2
        or (a.shape[1], b.shape[0], b.shape[1]) != (d_in, d_out, a.shape[0])
        or (layer is not None and layer >= n)
    ):
        where = f"a model with {n} layers" if n else "this model"
        raise CheckpointError(
            f"{weights}: {module} has lora_A {list(a.shape)} and lora_B {list(b.shape)}, which do not fit its "
            f"[{d_out}, {d_in}] weight in {where}; the adapter was made for another model."
        )


def _stack(path, layers: dict, modules, config) -> KernelDelta:
    """Pads every layer's factors to the largest rank; layers the adapter skips get zeros."""
    rule = next(r for rs in modules.values() for r in rs if tuple(r.target.split("/")) == path)
    rank = max(a.shape[1] for a, _ in layers.values())
    pad = lambda a, b: (np.pad(a, ((0, 0), (0, rank - a.shape[1]))), np.pad(b, ((0, rank - b.shape[0]), (0, 0))))  # noqa: E731
    if rule.num_layers is None:
        a, b = pad(*layers[None])
        return KernelDelta(a, b)
    d_in, d_out = next(iter(layers.values()))[0].shape[0], next(iter(layers.values()))[1].shape[1]
    a_all = np.zeros((rule.num_layers, d_in, rank), np.float32)
    b_all = np.zeros((rule.num_layers, rank, d_out), np.float32)
    for i, (a, b) in layers.items():
        a_all[i], b_all[i] = pad(a, b)
    return KernelDelta(a_all, b_all)


# ---- writing ----------------------------------------------------------------------------------------------------
def peft_tensors(adapters: dict, config: ModelConfig) -> dict[str, np.ndarray]:
    """PEFT's tensors for our adapter tree (stacked lora_a / lora_b leaves as in model/lora.py)."""
    by_target = {tuple(r.target.split("/")): r for r in rules_for(config)}
    out = {}
    for path, leaf in traverse_util.flatten_dict(adapters).items():
        module, which = path[:-1], {"lora_a": "A", "lora_b": "B"}[path[-1]]
        kernel = module[:-1] + ("q_proj", "kernel") if module[-1] == FUSED else module + ("kernel",)
        rule = by_target[kernel]
        name = rule.source.removesuffix(".weight")
        x = np.asarray(leaf, np.float32)
        if rule.num_layers is None:
            out[f"{_PREFIX}{name}.lora_{which}.weight"] = np.ascontiguousarray(x.T)
            continue
        for i in range(rule.num_layers):
            out[f"{_PREFIX}{name.format(i=i)}.lora_{which}.weight"] = np.ascontiguousarray(x[i].T)
    return out


def target_regex(adapters: dict, config: ModelConfig) -> str:
    """PEFT's target_modules as one regex (re.fullmatch over module names) naming exactly the adapted modules."""
    names = sorted(
        {
            re.sub(r"\.\d+\.", r".*.", k.removeprefix(_PREFIX).rsplit(".lora_", 1)[0])
            for k in peft_tensors(adapters, config)
        }
    )
    alternatives = [re.escape(n).replace(re.escape(".*."), r"\.\d+\.") for n in names]
    return "^(" + "|".join(alternatives) + ")$"


def write_adapter(out: Path, adapters: dict, config: ModelConfig, spec: LoraSpec, base_model: str) -> None:
    """An adapter dir PEFT loads: `PeftModel.from_pretrained(hf_model, out)`."""
    out = Path(out)
    doc = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "use_rslora": spec.rslora,
        "target_modules": target_regex(adapters, config),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    (out / CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    write_safetensors(out / WEIGHTS_FILE, peft_tensors(adapters, config), metadata={"format": "pt"})
