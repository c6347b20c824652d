"""convert / export-hf: round trip through transformers, the real 7B shapes, and every bad input."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests._oracles import require

torch = require("torch", "the parity oracle")

from flax import traverse_util  # noqa: E402

from qwen_audio_jax.checkpoint.model_dir import load_params, param_metadata, read_model_dir_config  # noqa: E402
from qwen_audio_jax.cli.main import main  # noqa: E402
from qwen_audio_jax.config import qwen2_audio_7b  # noqa: E402
from qwen_audio_jax.conversion.hf_config import from_hf_config, to_hf_config  # noqa: E402
from qwen_audio_jax.conversion.name_map import hf_shape, qwen2_audio_rules  # noqa: E402
from qwen_audio_jax.conversion.safetensors_io import SafetensorsFile, write_safetensors  # noqa: E402
from qwen_audio_jax.model.params import abstract_params, build_module, count_params  # noqa: E402
from tests._hf_models import GQA, build_hf_model, jax_twin, random_batch  # noqa: E402

# A small vocab keeps the files small (still several shards); ids 500-502 play <|AUDIO|>, bos, eos.
SMALL = dataclasses.replace(GQA, name="small", vocab=512, audio_token_id=500)


def _hf_logits(model, batch):
    tokens, mask, mel, _, frame_mask = batch
    with torch.no_grad():
        return model(
            input_ids=torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(mask).long(),
            input_features=torch.from_numpy(mel).to(model.dtype),
            feature_attention_mask=torch.from_numpy(frame_mask).long(),
        ).logits


@pytest.fixture(scope="module")
def batch():
    return random_batch(
        np.random.default_rng(3),
        [[1.2], [0.6, 0.9]],
        [7, 4],
        pad_side="right",
        audio_ids=(500, 501, 502),
        text_vocab=499,
    )


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny HF checkpoint saved in several safetensors shards, plus tokenizer-like aux files."""
    d = tmp_path_factory.mktemp("hf") / "tiny-qwen2-audio"
    model = build_hf_model(SMALL, seed=7)
    model.save_pretrained(d, max_shard_size="300KB")
    (d / "preprocessor_config.json").write_text(json.dumps({"feature_size": 128}))
    (d / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 8192}))
    assert len(list(d.glob("*.safetensors"))) >= 3, "the fixture must exercise sharded loading"
    return d


def _convert(src, dst, *extra):
    return main(["convert", str(src), str(dst), "--no-progress", *extra])


@pytest.mark.parity
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_default_round_trip_is_bit_exact(tmp_path, dtype):
    """Lossless by default: an fp32 or bf16 source -> convert (no --dtype) -> export-hf gives the same tensors,
    dtypes and config.json back, byte for byte."""
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    src = tmp_path / "src"
    build_hf_model(SMALL, seed=7, dtype=torch_dtype).save_pretrained(src, max_shard_size="300KB")
    assert _convert(src, tmp_path / "jax") == 0
    assert {str(d) for _, d in param_metadata(tmp_path / "jax").values()} == {dtype}
    assert main(["export-hf", str(tmp_path / "jax"), str(tmp_path / "back"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    original, back = _tensors(src), _tensors(tmp_path / "back")
    assert original.keys() == back.keys()
    for name, x in original.items():
        assert x.dtype == back[name].dtype and x.tobytes() == back[name].tobytes(), name


def _tensors(directory) -> dict:
    out = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        st = SafetensorsFile(f)
        out.update({n: st.read(n) for n in st.names()})
    return out


@pytest.mark.parity
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_is_exact(hf_dir, tmp_path, batch, dtype):
    from transformers import Qwen2AudioForConditionalGeneration

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    original = Qwen2AudioForConditionalGeneration.from_pretrained(hf_dir, torch_dtype=torch_dtype).eval()
    assert _convert(hf_dir, tmp_path / "jax", "--dtype", dtype) == 0
    assert (tmp_path / "jax" / "preprocessor_config.json").exists()
    assert (
        main(["export-hf", str(tmp_path / "jax"), str(tmp_path / "back"), "--max-shard-size", "200KB", "--no-progress"])
        == 0
    )
    assert len(list((tmp_path / "back").glob("*.safetensors"))) >= 3
    reloaded = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path / "back", torch_dtype=torch_dtype).eval()
    for (n1, p1), (n2, p2) in zip(original.state_dict().items(), reloaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert torch.equal(_hf_logits(original, batch), _hf_logits(reloaded, batch))


@pytest.mark.parity
def test_converted_dir_gives_reference_logits(hf_dir, tmp_path, batch):
    """The Orbax params written by `convert` run in JAX to the transformers logits (fp32, 1e-4)."""
    from transformers import Qwen2AudioForConditionalGeneration

    assert _convert(hf_dir, tmp_path / "jax", "--dtype", "float32") == 0
    config, _ = read_model_dir_config(tmp_path / "jax")
    params = load_params(tmp_path / "jax")
    hf = Qwen2AudioForConditionalGeneration.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    _, in_memory = jax_twin(hf)
    flat, want_flat = traverse_util.flatten_dict(params), traverse_util.flatten_dict(in_memory)
    assert flat.keys() == want_flat.keys()
    for k in flat:
        np.testing.assert_array_equal(np.asarray(flat[k]), want_flat[k])
    tokens, mask, mel, lengths, _ = batch
    got = build_module(config).apply({"params": params}, tokens, mask, mel, lengths)
    want = _hf_logits(hf, batch).numpy()
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[valid], want[valid], atol=1e-4, rtol=0)


def test_7b_shapes_and_names():
    """eval_shape on the real config: the published parameter count, and the HF 7B names map one-to-one."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    config = qwen2_audio_7b()
    abstract = abstract_params(config)
    assert count_params(abstract) == 8_397_094_912  # = total_size 16,794,189,824 bytes / 2 (docs/reference.md §5.3)
    hf_cfg = to_hf_config(config)
    assert from_hf_config(hf_cfg) == config
    with torch.device("meta"):
        hf = Qwen2AudioForConditionalGeneration(
            Qwen2AudioConfig(**{k: v for k, v in hf_cfg.items() if k != "model_type"})
        )
    hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    flat = traverse_util.flatten_dict(abstract, sep="/")
    mapped = {}
    for rule in qwen2_audio_rules(config):
        shape = flat[rule.target].shape
        for name in rule.source_names():
            assert name not in mapped
            mapped[name] = hf_shape(rule, shape[1:] if rule.num_layers else shape)
    assert mapped == hf_shapes
    assert len(mapped) == 876  # the published index lists 876 tensors


def test_published_hub_config_parses():
    """The sparse hub config.json of Qwen2-Audio-7B-Instruct (docs/reference.md §1.2) gives the 7B preset exactly."""
    hub = {
        "architectures": ["Qwen2AudioForConditionalGeneration"],
        "audio_config": {
            "model_type": "qwen2_audio_encoder",
            "num_mel_bins": 128,
            "encoder_layers": 32,
            "encoder_attention_heads": 20,
            "encoder_ffn_dim": 5120,
            "d_model": 1280,
            "activation_function": "gelu",
            "scale_embedding": False,
            "max_source_positions": 1500,
        },
        "audio_token_index": 151646,
        "ignore_index": -100,
        "model_type": "qwen2_audio",
        "text_config": {
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "intermediate_size": 11008,
            "max_position_embeddings": 8192,
            "model_type": "qwen2",
            "rope_theta": 10000,
            "rms_norm_eps": 1e-5,
            "sliding_window": 32768,
            "torch_dtype": "bfloat16",
            "use_mrope": False,
            "vocab_size": 156032,
        },
        "transformers_version": "4.38.1",
        "vocab_size": 156032,
    }
    assert from_hf_config(hub) == qwen2_audio_7b()


# ---- bad inputs: one clear line, exit status 2, no DST left behind ---------------------------------------------


def _expect_error(capsys, dst: Path, argv, *needles):
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    assert not dst.exists()
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.tmp")], "temp dir left behind"


@pytest.fixture
def broken(hf_dir, tmp_path):
    d = tmp_path / "src"
    shutil.copytree(hf_dir, d)
    return d


def _shards(d: Path) -> list[Path]:
    return sorted(d.glob("model-*.safetensors"))


def test_missing_shard(broken, tmp_path, capsys):
    _shards(broken)[1].unlink()
    _expect_error(
        capsys,
        tmp_path / "out",
        ["convert", str(broken), str(tmp_path / "out")],
        _shards(broken)[0].name[:6],
        "missing",
    )


def test_truncated_shard(broken, tmp_path, capsys):
    shard = _shards(broken)[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    _expect_error(capsys, tmp_path / "out", ["convert", str(broken), str(tmp_path / "out")], shard.name, "truncated")


def test_corrupt_header(broken, tmp_path, capsys):
    shard = _shards(broken)[0]
    data = bytearray(shard.read_bytes())
    data[8:40] = b"\xff" * 32
    shard.write_bytes(bytes(data))
    _expect_error(capsys, tmp_path / "out", ["convert", str(broken), str(tmp_path / "out")], shard.name, "corrupt")


def _rewrite_tensor(d: Path, name: str, fn):
    for shard in _shards(d):
        f = SafetensorsFile(shard)
        if name in f.names():
            tensors = {n: (fn(f.read(n)) if n == name else f.read(n)) for n in f.names()}
            write_safetensors(shard, tensors)
            return shard
    raise AssertionError(name)


def test_wrong_shape(broken, tmp_path, capsys):
    shard = _rewrite_tensor(broken, "language_model.model.norm.weight", lambda x: np.ones(x.shape[0] + 1, x.dtype))
    _expect_error(
        capsys,
        tmp_path / "out",
        ["convert", str(broken), str(tmp_path / "out")],
        shard.name,
        "language_model.model.norm.weight",
        "shape",
    )


def test_wrong_dtype(broken, tmp_path, capsys):
    shard = _rewrite_tensor(broken, "audio_tower.conv1.bias", lambda x: x.astype(np.int32))
    _expect_error(capsys, tmp_path / "out", ["convert", str(broken), str(tmp_path / "out")], shard.name, "dtype")


def test_other_model_type(broken, tmp_path, capsys):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["model_type"] = "llama"
    (broken / "config.json").write_text(json.dumps(cfg))
    _expect_error(capsys, tmp_path / "out", ["convert", str(broken), str(tmp_path / "out")], "llama", "qwen2_audio")


def test_unsupported_config_attribute(broken, tmp_path, capsys):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["text_config"]["rope_scaling"] = {"type": "linear", "factor": 2.0}
    (broken / "config.json").write_text(json.dumps(cfg))
    _expect_error(capsys, tmp_path / "out", ["convert", str(broken), str(tmp_path / "out")], "rope_scaling")


def test_destination_exists(hf_dir, tmp_path, capsys):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert main(["convert", str(hf_dir), str(dst), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (dst / "keep.txt").read_text() == "mine"  # nothing lost
    # --overwrite never deletes a directory this tool did not write...
    assert main(["convert", str(hf_dir), str(dst), "--no-progress", "--overwrite"]) == 2
    assert "not written by qwen-audio-jax" in capsys.readouterr().err
    assert (dst / "keep.txt").read_text() == "mine"
    # ...but replaces one it wrote.
    ours = tmp_path / "ours"
    assert main(["convert", str(hf_dir), str(ours), "--no-progress"]) == 0
    (ours / "stale.txt").write_text("from an earlier run")
    assert main(["convert", str(hf_dir), str(ours), "--no-progress", "--overwrite", "--dtype", "float32"]) == 0
    assert not (ours / "stale.txt").exists() and (ours / "params").is_dir()


def test_pickle_needs_opt_in(tmp_path, capsys):
    model = build_hf_model(SMALL, seed=7)
    src = tmp_path / "bin"
    model.save_pretrained(src, safe_serialization=False)
    assert list(src.glob("pytorch_model*.bin")) and not list(src.glob("*.safetensors"))
    _expect_error(capsys, tmp_path / "out", ["convert", str(src), str(tmp_path / "out")], "--allow-pickle")
    assert _convert(src, tmp_path / "out", "--allow-pickle", "--dtype", "float32") == 0
    params = load_params(tmp_path / "out")
    np.testing.assert_array_equal(
        np.asarray(params["lm_head"]["kernel"]), model.language_model.lm_head.weight.detach().numpy().T
    )


def test_unused_tensor_refused(broken, tmp_path, capsys):
    write_safetensors(broken / "extra.safetensors", {"vision_tower.weight": np.zeros(3, np.float32)})
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    index["weight_map"]["vision_tower.weight"] = "extra.safetensors"
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    _expect_error(capsys, tmp_path / "out", ["convert", str(broken), str(tmp_path / "out")], "vision_tower.weight")


def test_model_dir_is_not_hf(hf_dir, tmp_path, capsys):
    _expect_error(capsys, tmp_path / "out", ["export-hf", str(hf_dir), str(tmp_path / "out")], "convert it first")


def test_jax_param_tree_dtype(hf_dir, tmp_path):
    assert _convert(hf_dir, tmp_path / "jax", "--dtype", "bfloat16") == 0  # the fixture's source is fp32
    meta = param_metadata(tmp_path / "jax")
    assert {str(d) for _, d in meta.values()} == {"bfloat16"}
    abstract = traverse_util.flatten_dict(abstract_params(read_model_dir_config(tmp_path / "jax")[0]), sep="/")
    assert {k: v.shape for k, v in abstract.items()} == {k: s for k, (s, _) in meta.items()}
