"""Human and JSON renderings of a memory plan (sharding/planner.py), for the `plan` command."""

from __future__ import annotations

import dataclasses

from qwen_audio_jax.sharding.planner import CATEGORIES, DEFAULT_MARGIN, GIB, KIB, MIB, MemoryPlan, fits


def human(n: int) -> str:
    """Bytes as GiB (>= 1 GiB), MiB (>= 1 MiB), KiB or B."""
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def to_dict(
    plan: MemoryPlan, device: str | None = None, device_memory: int | None = None, margin: float = DEFAULT_MARGIN
) -> dict:
    """JSON-ready: every field, the total, and the fit verdict when a device size is given."""
    out = dataclasses.asdict(plan)
    out["num_devices"] = plan.num_devices
    out["total"] = plan.total
    if device_memory is not None:
        out.update(
            device=device,
            device_memory=device_memory,
            margin=margin,
            usable=int(margin * device_memory),
            fits=fits(plan, device_memory, margin),
        )
    return out


def format_plan(
    plan: MemoryPlan, device: str | None = None, device_memory: int | None = None, margin: float = DEFAULT_MARGIN
) -> str:
    """A human table of per-device bytes, with the fit verdict when a device size is given."""
    mesh = ",".join(f"{k}={v}" for k, v in plan.mesh.items())
    job = "training" if plan.train else "inference"
    encoder = "frozen" if plan.freeze_audio_encoder else "trained"
    lines = [
        f"{plan.model}: {job} on mesh {mesh} ({plan.num_devices} device{'s' if plan.num_devices > 1 else ''})",
        f"batch {plan.batch}"
        + (f" (padded to {plan.padded_batch})" if plan.padded_batch != plan.batch else "")
        + f", {plan.rows_per_device} per device; max-len {plan.max_len}"
        + ("" if plan.train or plan.prompt_len == plan.max_len else f" (prompt {plan.prompt_len})"),
        f"params {plan.param_dtype}, compute {plan.compute_dtype}"
        + (f", weights {plan.quantize}" if plan.quantize != "none" else "")
        + (f", KV cache {plan.kv_cache_dtype}" if plan.kv_cache_dtype != "auto" else "")
        + (f", remat {plan.remat}, audio encoder {encoder}" if plan.train else "")
        + (", projector frozen" if plan.freeze_projector else "")
        + (f", grad accum {plan.grad_accum}" if plan.grad_accum > 1 else ""),
        f"parameters {plan.total_params:,}" + (f" (trainable {plan.trainable_params:,})" if plan.train else ""),
        *(
            [
                f"LoRA rank {plan.lora_rank}: adapters train over a frozen {plan.param_dtype} base held once "
                "(DPO's reference: the base with the adapters off)"
            ]
            if plan.lora_rank
            else []
        ),
        "",
        f"{'per device':<22}{'':>12}{'bytes':>18}",
    ]
    for field, label in CATEGORIES:
        n = getattr(plan, field)
        lines.append(f"{label:<22}{human(n):>12}{n:>18,}")
    lines.append(f"{'total':<22}{human(plan.total):>12}{plan.total:>18,}")
    if device_memory is not None:
        usable = int(margin * device_memory)
        ok = fits(plan, device_memory, margin)
        spare = human(abs(usable - plan.total))
        verdict = f"fits ({spare} to spare)" if ok else f"does not fit ({spare} over)"
        name = f"{device} " if device else ""
        lines += ["", f"device {name}{human(device_memory)} x {margin:.0%} usable = {human(usable)}: {verdict}"]
        if device and not device.startswith("tpu"):
            lines.append("note: JAX preallocates 75% of GPU memory by default; set XLA_PYTHON_CLIENT_MEM_FRACTION=.95")
    return "\n".join(lines)
