"""LoRA test helpers: PEFT's adapter tensors <-> our adapter tree, and the summed log-prob both sides differentiate.

Our layouts (model/lora.py): lora_a [L?, in, r] = PEFT's lora_A.T, lora_b [L?, r, out] = PEFT's lora_B.T (the
scale stays outside, in the module), v1's fused c_attn one adapter whose lora_b columns are [q | k | v]. The
mapping below goes through the converter's name map only (HF module name <-> our kernel path)."""

from __future__ import annotations

import numpy as np
from flax import traverse_util

from qwen_audio_jax.conversion.name_map import rules_for

FUSED = "c_attn"


def _module_rule(path: tuple[str, ...], config):
    """The name-map rule whose HF module an adapter leaf's module (`path` without the leaf name) is."""
    kernel = "/".join(path[:-2] + ("q_proj" if path[-2] == FUSED else path[-2], "kernel"))
    return next(r for r in rules_for(config) if r.target == kernel)


def peft_names(path: tuple[str, ...], config) -> list[str]:
    """PEFT's parameter names (with the adapter name "default", as in a live PeftModel) of one leaf, per layer."""
    rule = _module_rule(path, config)
    which = {"lora_a": "lora_A", "lora_b": "lora_B"}[path[-1]]
    return [f"{n.removesuffix('.weight')}.{which}.default.weight" for n in rule.source_names()]


def tree_from_peft(tensors: dict[str, np.ndarray], abstract: dict, config) -> dict:
    """Our adapter tree (shapes of `abstract`) from PEFT tensors {module name ... .lora_A.default.weight: array}
    (weights or their gradients: the layout maps the same way). Names may carry PEFT's base_model.model. prefix."""
    plain = {k.removeprefix("base_model.model."): np.asarray(v, np.float32) for k, v in tensors.items()}
    out = {}
    for path, leaf in traverse_util.flatten_dict(abstract).items():
        per_layer = [plain.pop(name).T for name in peft_names(path, config)]
        out[path] = np.stack(per_layer) if len(leaf.shape) == 3 else per_layer[0]
        assert out[path].shape == tuple(leaf.shape), (path, out[path].shape, leaf.shape)
    assert not plain, f"PEFT tensors with no place in the adapter tree: {sorted(plain)[:4]}"
    return traverse_util.unflatten_dict(out)


def lora_tensors(torch_model, *, grads: bool = False) -> dict[str, np.ndarray]:
    """{name: array} of every lora_A / lora_B parameter of a PEFT-injected torch model (or its .grad: zeros where
    the loss did not reach it)."""
    out = {}
    for name, p in torch_model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            t = p if not grads else p.grad if p.grad is not None else p.new_zeros(p.shape)
            out[name] = t.detach().cpu().numpy().astype(np.float32)
    return out


def scale_lora_b(torch_model, factor: float) -> None:
    """lora_B *= factor (PEFT's init_lora_weights=False draws B like A; smaller keeps the delta ~ the weights)."""
    import torch

    with torch.no_grad():
        for name, p in torch_model.named_parameters():
            if ".lora_B." in name:
                p.mul_(factor)


def summed_logprob(logits, tokens, mask, xp):
    """Sum over rows of log p(token[t+1] | ..t) where both positions are real tokens (mask 1); xp: jnp or torch."""
    if xp.__name__ == "torch":
        logp = xp.log_softmax(logits[:, :-1].float(), dim=-1)
        picked = xp.gather(logp, -1, tokens[:, 1:, None].long())[..., 0]
    else:
        logp = xp.asarray(logits[:, :-1], xp.float32)
        logp = logp - xp.max(logp, axis=-1, keepdims=True)
        logp = logp - xp.log(xp.sum(xp.exp(logp), axis=-1, keepdims=True))
        picked = xp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    both = mask[:, 1:] * mask[:, :-1]
    return (picked * both).sum()
