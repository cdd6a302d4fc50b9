"""Real CLIP weights reach the frozen towers: every file format open_clip users have, loaded
through tgcnet's public ``create_model``, gives a model whose every frozen CLIP tensor equals the
saved one and whose towers compute open_clip's own ``encode_image`` / ``encode_text``.

Sources are tiny random CLIPs built by open_clip itself (the native ``tgcnet-tiny`` shape) or by
``tgcnet.backbone.instantiate`` (the BiomedCLIP-shaped ``tgcnet-tiny-biomedclip``: timm ViT +
BERT), with every tensor moved off its default init so that a tensor left unloaded is caught.
Hub sources come from a temporary Hugging Face cache read offline, as on a cluster node.
"""
from __future__ import annotations

import copy
import hashlib
import json
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
from open_clip.model import CLIP, convert_weights_to_lp
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file
from torch import nn

from tgcnet import create_model
from tgcnet.backbone import instantiate
from tgcnet.config import get_preset
from tgcnet.text_towers import HFTextTower

TINY, BIOMED = "tgcnet-tiny", "tgcnet-tiny-biomedclip"
#: the hub's weight file names, as open_clip writes them
SAFETENSORS, PYTORCH_BIN = "open_clip_model.safetensors", "open_clip_pytorch_model.bin"
#: a preprocessing config unlike OpenAI's, so that where model.image_mean came from shows
HUB_MEAN, HUB_STD = (0.5, 0.25, 0.125), (0.2, 0.3, 0.4)


# ------------------------------------------------------------------ sources and files

def model_cfg(preset: str, **changes: Any) -> dict:
    cfg = get_preset(preset).clip.model_cfg
    for key, value in changes.items():   # "vision_cfg" merges into the preset's, the rest replace
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    return cfg


def source_clip(preset: str, seed: int, **changes: Any) -> nn.Module:
    """A tiny CLIP as its authors' code builds it, every tensor moved off its default init."""
    cfg = model_cfg(preset, **changes)
    torch.manual_seed(seed)
    model = CLIP(**cfg) if preset == TINY else instantiate(cfg)   # open_clip's own class for the native one
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.05 * torch.randn_like(tensor))
    return model.eval()


def write_weights(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """``state`` as open_clip's hub files are written: safetensors or ``torch.save``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def hub_config(cfg: dict) -> dict:
    """``open_clip_config.json`` as open_clip's ``push_to_hf_hub`` writes it."""
    return {"model_cfg": cfg, "preprocess_cfg": {"mean": list(HUB_MEAN), "std": list(HUB_STD)}}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, read offline; returns ``put(repo, {filename: content})``.

    huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE from the environment once, at import;
    ``hf_hub_download`` then reads ``constants.HF_HUB_CACHE`` and ``constants.is_offline_mode()``
    (the module's ``HF_HUB_OFFLINE``) on each call, so those are patched along with the environment.
    """
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)

    def put(repo: str, files: dict[str, Any]) -> Path:
        """The cache layout: refs/main names a commit whose snapshot folder holds the files."""
        folder = cache / f"models--{repo.replace('/', '--')}"
        commit = hashlib.sha1(repo.encode()).hexdigest()
        snapshot = folder / "snapshots" / commit
        snapshot.mkdir(parents=True)
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text(commit)
        for name, content in files.items():
            if name.endswith(".json"):
                (snapshot / name).write_text(json.dumps(content))
            else:
                write_weights(snapshot / name, content)
        return snapshot

    return put


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """open_clip's model-config and pretrained-tag registries, restored after the test;
    returns ``register(name, cfg, tags)``."""
    from open_clip import factory, pretrained

    monkeypatch.setattr(factory, "_MODEL_CONFIG_PATHS", list(factory._MODEL_CONFIG_PATHS))
    monkeypatch.setattr(factory, "_MODEL_CONFIGS", dict(factory._MODEL_CONFIGS))

    def register(name: str, cfg: dict, tags: dict[str, dict]) -> None:
        path = tmp_path / "open_clip_configs" / f"{name}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)
        monkeypatch.setitem(pretrained._PRETRAINED, name, tags)
        assert name in open_clip.list_models() and open_clip.get_pretrained_cfg(name, next(iter(tags)))

    return register


# ------------------------------------------------------------------ parity checks

def frozen_clip_tensors(model: nn.Module, text_prefix: str) -> dict[str, torch.Tensor]:
    """Every frozen CLIP tensor of a built TGCNet, under its open_clip checkpoint name.

    Undoes tgcnet's renames: the fused attention's ``attn.in_proj.weight`` is open_clip's
    ``attn.in_proj_weight``, and peft keeps a LoRA target's own weight as ``base_layer.weight``.
    LoRA's A/B matrices are tgcnet's trainable additions, not CLIP tensors.
    """
    tensors = {}
    towers = {"visual.": model.sse.clip_visual.visual, text_prefix: model.date.text_tower}
    for prefix, tower in towers.items():
        names = list(tower.state_dict())
        assert prefix == "visual." or any(".lora_" in n for n in names), "the text tower has no LoRA"
        for name, tensor in tower.state_dict().items():
            if ".lora_" in name:
                continue
            name = re.sub(r"attn\.in_proj\.(weight|bias)$", r"attn.in_proj_\1", name.replace(".base_layer.", "."))
            tensors[prefix + name] = tensor
    return tensors


def text_prefix(source: nn.Module) -> str:
    """Where a CLIP keeps its text tower: at its root (``CLIP``) or under ``text.``."""
    return "" if isinstance(source, CLIP) else "text."


def assert_same_clip(model: nn.Module, state: dict[str, torch.Tensor], prefix: str) -> None:
    """The model's frozen tensors are exactly ``state`` (a CLIP state dict), name for name."""
    got = frozen_clip_tensors(model, prefix)
    want = {k: v for k, v in state.items() if k not in ("logit_scale", "logit_bias")}
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert got[name].dtype == torch.float32, name
        assert torch.equal(got[name], tensor.to(got[name].dtype)), f"{name} differs from the checkpoint"


def assert_landmarks(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Direct reads of the tensors a wrong load breaks first, free of the renaming above."""
    visual, text = model.sse.clip_visual.visual, model.date.text_tower
    if isinstance(text, HFTextTower):
        embeddings = text.transformer.embeddings
        pairs = {"visual.trunk.patch_embed.proj.weight": visual.trunk.patch_embed.proj.weight,
                 "visual.trunk.pos_embed": visual.trunk.pos_embed,
                 "visual.trunk.cls_token": visual.trunk.cls_token,
                 "text.transformer.embeddings.word_embeddings.weight": embeddings.word_embeddings.weight,
                 "text.transformer.embeddings.position_embeddings.weight": embeddings.position_embeddings.weight}
    else:
        pairs = {"visual.conv1.weight": visual.conv1.weight,
                 "visual.positional_embedding": visual.positional_embedding,
                 "visual.class_embedding": visual.class_embedding, "visual.proj": visual.proj,
                 "token_embedding.weight": text.token_embedding.weight,
                 "positional_embedding": text.positional_embedding, "text_projection": text.text_projection}
    for name, tensor in pairs.items():
        assert torch.equal(tensor, state[name].to(tensor.dtype)), name


def text_ids(model: nn.Module, generator: torch.Generator) -> torch.Tensor:
    """Two captions of different lengths, padded with zeros, in the tower's vocabulary."""
    tower = model.date.text_tower
    if isinstance(tower, HFTextTower):
        vocab, eot = tower.transformer.config.vocab_size, None
    else:
        vocab = tower.token_embedding.num_embeddings
        eot = vocab - 1   # CLIP pools at the largest id, its end-of-text token
    ids = torch.zeros(2, tower.context_length, dtype=torch.long)
    for row, length in enumerate((7, 19)):
        ids[row, :length] = torch.randint(1, (eot or vocab), (length,), generator=generator)
        if eot is not None:
            ids[row, length - 1] = eot
    return ids


def assert_same_outputs(model: nn.Module, reference: nn.Module) -> None:
    """tgcnet's towers compute what open_clip computes with the same weights."""
    model.eval()
    reference = reference.eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 224, 224, generator=generator)
    ids = text_ids(model, generator)
    with torch.no_grad():
        image, text = reference.encode_image(x), reference.encode_text(ids)
        tokens, pooled = model.date.text_tower(ids)
    torch.testing.assert_close(model.sse.clip_visual.pooled_embedding(x), image, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pooled, text, atol=1e-5, rtol=1e-4)
    assert tokens.shape == (*ids.shape, text.shape[-1])


def activations(model: nn.Module) -> set[str]:
    """The MLP activations in both frozen towers."""
    towers = (model.sse.clip_visual, model.date.text_tower)
    return {type(m).__name__ for t in towers for m in t.modules() if isinstance(m, (nn.GELU, QuickGELU))}


def load(preset: str, **kwargs: Any) -> nn.Module:
    return create_model(preset, knowledge=None, **kwargs).eval()


# ------------------------------------------------------------------ checkpoint files

@pytest.mark.parametrize("filename", [PYTORCH_BIN, SAFETENSORS])
@pytest.mark.parametrize("preset", [TINY, BIOMED])
def test_hub_weight_files_load_exactly(tmp_path, preset, filename):
    source = source_clip(preset, seed=11 if preset == TINY else 12)
    state = source.state_dict()
    on_disk = dict(state)
    if preset == BIOMED and filename == PYTORCH_BIN:
        # BiomedCLIP's hub .bin was saved by an older transformers that kept this buffer
        on_disk["text.transformer.embeddings.position_ids"] = torch.arange(128)[None]
    model = load(preset, pretrained=str(write_weights(tmp_path / filename, on_disk)))
    assert_same_clip(model, state, text_prefix(source))
    assert_landmarks(model, state)
    assert_same_outputs(model, source)


@pytest.mark.parametrize("preset", [TINY, BIOMED])
def test_training_checkpoint_of_a_ddp_run_loads(tmp_path, preset):
    """open_clip_train's checkpoint: epoch, run name, optimizer state, and the DDP-wrapped state dict."""
    source = source_clip(preset, seed=21)
    state = source.state_dict()
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(3))])
    optimizer.step()
    checkpoint = {"epoch": 32, "name": "run-1", "optimizer": optimizer.state_dict(),
                  "state_dict": {f"module.{k}": v for k, v in state.items()}}
    model = load(preset, pretrained=str(write_weights(tmp_path / "epoch_32.pt", checkpoint)))
    assert_same_clip(model, state, text_prefix(source))
    assert_same_outputs(model, source)


def openai_style_torchscript(source: CLIP, path: Path) -> Path:
    """``source`` saved as OpenAI saved CLIP: a TorchScript archive of float16 weights that
    also holds ``input_resolution``, ``context_length`` and ``vocab_size`` tensors."""
    model = copy.deepcopy(source)
    convert_weights_to_lp(model, torch.float16)   # what OpenAI's files hold: fp16 except norms
    model.register_buffer("input_resolution", torch.tensor(224))
    for name in ("context_length", "vocab_size"):   # open_clip keeps these as ints; OpenAI's file, tensors
        value = getattr(model, name)
        delattr(model, name)
        model.register_buffer(name, torch.tensor(value))
    torch.jit.save(torch.jit.script(model), str(path))
    return path


def assert_torchscript_archive(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    assert any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


@pytest.mark.filterwarnings("ignore::FutureWarning")   # torch.jit.script/load are deprecated in torch 2.14
def test_openai_torchscript_file_loads_with_quick_gelu(tmp_path):
    """OpenAI's ``ViT-B-16.pt``: TorchScript, fp16, extra tensors, and trained with QuickGELU,
    which no tensor records: the file alone must switch the (GELU) preset's towers to it."""
    source = source_clip(TINY, seed=31, quick_gelu=True)
    path = openai_style_torchscript(source, tmp_path / "ViT-tiny.pt")
    assert_torchscript_archive(path)
    file_state = torch.jit.load(str(path)).state_dict()
    assert file_state["visual.conv1.weight"].dtype == torch.float16
    assert {"input_resolution", "context_length", "vocab_size"} <= set(file_state)
    state = {k: v for k, v in file_state.items() if k not in ("input_resolution", "context_length", "vocab_size",
                                                              "attn_mask")}
    model = load(TINY, pretrained=str(path))
    assert activations(model) == {"QuickGELU"}
    assert_same_clip(model, state, "")
    assert_landmarks(model, state)
    reference = copy.deepcopy(source)
    convert_weights_to_lp(reference, torch.float16)
    assert_same_outputs(model, reference.float())   # the fp16 values, computed in float32 as tgcnet does


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_of_an_open_clip_model_loads(tmp_path, how):
    """``torch.jit.script`` / ``trace_module`` of a CLIP (what open_clip's ``trace_model`` does, which
    itself fails on open_clip 3.3's tuple ``image_size``): TorchScript saves the non-persistent
    ``attn_mask`` buffer too. Not OpenAI's file, so the activation stays GELU."""
    source = source_clip(TINY, seed=32)
    if how == "script":
        compiled = torch.jit.script(copy.deepcopy(source))
    else:
        images, texts = torch.ones(1, 3, 224, 224), torch.zeros(1, 77, dtype=torch.long)
        compiled = torch.jit.trace_module(copy.deepcopy(source), {
            "forward": (images, texts), "encode_text": (texts,), "encode_image": (images,)}, check_trace=False)
    path = tmp_path / f"{how}.pt"
    torch.jit.save(compiled, str(path))
    assert_torchscript_archive(path)
    assert "attn_mask" in torch.jit.load(str(path)).state_dict()
    model = load(TINY, pretrained=str(path))
    assert activations(model) == {"GELU"}
    assert_same_clip(model, source.state_dict(), "")
    assert_same_outputs(model, source)


@pytest.mark.parametrize("key", ["visual.transformer.resblocks.1.attn.in_proj_weight",   # renamed: fused attention
                                 "transformer.resblocks.0.mlp.c_fc.weight",               # wrapped by LoRA
                                 "token_embedding.weight"])
def test_the_parity_check_sees_a_changed_tensor(tmp_path, key):
    """The checks above can fail: one element changed in the file is found, by name."""
    source = source_clip(TINY, seed=41)
    state = source.state_dict()
    changed = {k: v.clone() for k, v in state.items()}
    changed[key].view(-1)[3] += 1e-3
    model = load(TINY, pretrained=str(write_weights(tmp_path / SAFETENSORS, changed)))
    assert_same_clip(model, changed, "")
    with pytest.raises(AssertionError, match=re.escape(key)):
        assert_same_clip(model, state, "")


# ------------------------------------------------------------------ pretrained tags and the hub cache

TAG_MODEL = "tgcnet-test-tiny"


@pytest.mark.parametrize("hf_hub, filename", [("tgcnet-test/tiny-clip/", SAFETENSORS),
                                              ("tgcnet-test/tiny-clip/weights.bin", "weights.bin")])
def test_pretrained_tag_from_the_cache(hub_cache, registry, hf_hub, filename):
    """A tag such as ``"openai"``: its hub repo (``org/name/``, or ``org/name/file`` as the
    ViTamin tags give it) is read from the cache, with its QuickGELU and its mean/std."""
    cfg = model_cfg(TINY)
    registry(TAG_MODEL, cfg, {"tinytag": {"url": "", "hf_hub": hf_hub, "mean": HUB_MEAN, "std": HUB_STD,
                                          "quick_gelu": True}})
    source = source_clip(TINY, seed=51, quick_gelu=True)
    hub_cache("tgcnet-test/tiny-clip", {filename: source.state_dict()})
    model = load(TINY, clip_model=TAG_MODEL, pretrained="TinyTag", clip__image_mean=None, clip__image_std=None)
    assert activations(model) == {"QuickGELU"}
    assert_same_clip(model, source.state_dict(), "")
    assert_same_outputs(model, source)
    torch.testing.assert_close(model.image_mean.flatten(), torch.tensor(HUB_MEAN))
    torch.testing.assert_close(model.image_std.flatten(), torch.tensor(HUB_STD))


def test_pretrained_tag_errors(hub_cache, registry):
    registry(TAG_MODEL, model_cfg(TINY), {
        "tinytag": {"url": "", "hf_hub": "tgcnet-test/not-cached/", "quick_gelu": True},
        "urltag": {"url": "https://example.org/tiny.pt", "hf_hub": ""}})
    with pytest.raises(FileNotFoundError, match=r"'nosuchtag' is neither a file nor a pretrained tag of "
                                                r"'tgcnet-test-tiny' \(tags: tinytag, urltag\)"):
        load(TINY, clip_model=TAG_MODEL, pretrained="nosuchtag")
    with pytest.raises(ValueError, match=r"hub repo tgcnet-test/not-cached, file open_clip_model.safetensors or "
                                         r"open_clip_pytorch_model.bin\) are not available: HF_HUB_OFFLINE is set.*"
                                         r"hf download tgcnet-test/not-cached"):
        load(TINY, clip_model=TAG_MODEL, pretrained="tinytag")
    with pytest.raises(ValueError, match=r"not on the Hugging Face hub: download https://example.org/tiny.pt"):
        load(TINY, clip_model=TAG_MODEL, pretrained="urltag")


def biomed_real_config(cfg: dict) -> dict:
    """BiomedCLIP's hub config names its BERT but does not hold its transformers config."""
    cfg = copy.deepcopy(cfg)
    del cfg["text_cfg"]["hf_model_config"]
    return cfg


@pytest.mark.parametrize("preset, weights, config", [(TINY, SAFETENSORS, None), (BIOMED, PYTORCH_BIN, None),
                                                     (BIOMED, SAFETENSORS, biomed_real_config)])
def test_hf_hub_model_from_the_cache(hub_cache, preset, weights, config):
    source = source_clip(preset, seed=61)
    cfg = model_cfg(preset)
    hub_cache("tgcnet-test/tiny", {"open_clip_config.json": hub_config(config(cfg) if config else cfg),
                                   weights: source.state_dict()})
    model = load(preset, clip_model="hf-hub:tgcnet-test/tiny", clip__image_mean=None, clip__image_std=None)
    assert_same_clip(model, source.state_dict(), text_prefix(source))
    assert_same_outputs(model, source)
    torch.testing.assert_close(model.image_mean.flatten(), torch.tensor(HUB_MEAN))
    torch.testing.assert_close(model.image_std.flatten(), torch.tensor(HUB_STD))
    # a mean/std given in the config wins over the hub's
    explicit = load(preset, clip_model="hf-hub:tgcnet-test/tiny", clip__image_mean=(0.1, 0.2, 0.3))
    torch.testing.assert_close(explicit.image_mean.flatten(), torch.tensor((0.1, 0.2, 0.3)))


def test_hf_hub_config_with_other_weights(hub_cache, tmp_path):
    """``pretrained=`` replaces the hub's weights: only the config need be in the cache."""
    source = source_clip(TINY, seed=62)
    hub_cache("tgcnet-test/config-only", {"open_clip_config.json": hub_config(model_cfg(TINY))})
    path = write_weights(tmp_path / "finetuned.safetensors", source.state_dict())
    model = load(TINY, clip_model="hf-hub:tgcnet-test/config-only", pretrained=str(path))
    assert_same_clip(model, source.state_dict(), "")
    with pytest.raises(ValueError, match=r"could not load the weights of CLIP 'hf-hub:tgcnet-test/config-only': "
                                         r"none of open_clip_model.safetensors, open_clip_pytorch_model.bin"):
        load(TINY, clip_model="hf-hub:tgcnet-test/config-only")


@pytest.mark.parametrize("preset", [TINY, BIOMED])
def test_local_dir_model(tmp_path, preset):
    source = source_clip(preset, seed=71)
    folder = tmp_path / "clip"
    write_weights(folder / PYTORCH_BIN, source.state_dict())
    (folder / "open_clip_config.json").write_text(json.dumps(hub_config(model_cfg(preset))))
    model = load(preset, clip_model=f"local-dir:{folder}", clip__image_mean=None, clip__image_std=None)
    assert_same_clip(model, source.state_dict(), text_prefix(source))
    assert_same_outputs(model, source)
    torch.testing.assert_close(model.image_mean.flatten(), torch.tensor(HUB_MEAN))


# ------------------------------------------------------------------ errors: one message naming the file and the tensor

def test_checkpoint_of_another_architecture(tmp_path):
    wider = source_clip(TINY, seed=81, vision_cfg={"width": 96, "head_width": 32})
    path = write_weights(tmp_path / "wider.safetensors", wider.state_dict())
    with pytest.raises(ValueError, match="^" + re.escape(
            f"CLIP checkpoint {path} does not match this architecture: tensor 'visual.class_embedding' has shape "
            "(96,) in the file, (64,) in the model") + "$"):   # the whole message: one tensor, not a key list
        load(TINY, pretrained=str(path))


def test_tensors_of_something_else(tmp_path):
    path = write_weights(tmp_path / "unet.safetensors", {"encoder.conv.weight": torch.randn(8, 3, 3, 3),
                                                         "decoder.head.bias": torch.randn(8)})
    with pytest.raises(ValueError, match=re.escape(f"CLIP checkpoint {path} does not match this architecture: "
                                                   "tensor 'positional_embedding' (77, 64) is missing from the file")):
        load(TINY, pretrained=str(path))


#: random bytes on which torch's unpickler happens to fail with "IndexError: pop from empty list"
GARBAGE = random.Random(14).randbytes(1000)


@pytest.mark.parametrize("name, content, reason", [
    ("random.bin", GARBAGE, f"it starts with {GARBAGE[:8]!r}, which is none of these"),
    ("empty.bin", b"", "the file is empty"),
    ("empty.safetensors", b"", "the file is empty"),
    ("error_page.bin", b"<!DOCTYPE html><html>rate limited</html>", "it starts with b'<!DOCTYP', which is"),
    ("truncated.bin", b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P", "it looks like a pytorch file but cannot be read: "),
])
def test_unreadable_file(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a readable CLIP checkpoint (safetensors, a PyTorch "
                                                   f"state dict or OpenAI's TorchScript file): {reason}")) as error:
        load(TINY, pretrained=str(path))
    assert "pop from empty list" not in str(error.value)


@pytest.mark.parametrize("content, reason", [
    ({}, "expected a state dict of tensors, got dict (empty)"),
    ({"model": {"w": torch.ones(1)}, "epoch": 3}, "its entry 'model' is a dict"),
    ([torch.ones(1)], "expected a state dict of tensors, got list"),
])
def test_file_holding_no_state_dict(tmp_path, content, reason):
    path = tmp_path / "checkpoint.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a CLIP checkpoint: ") + ".*" + re.escape(reason)):
        load(TINY, pretrained=str(path))


def test_checkpoint_holding_python_objects(tmp_path):
    """Read with ``weights_only=True``: an argparse Namespace is refused, in one line that says what to do."""
    import argparse

    path = tmp_path / "with_args.pt"
    torch.save({"state_dict": source_clip(TINY, seed=1).state_dict(), "args": argparse.Namespace(lr=1e-3)}, path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*Unsupported global: GLOBAL argparse.Namespace.*"
                                         r"save the state dict alone") as error:
        load(TINY, pretrained=str(path))
    assert "\n" not in str(error.value)


def test_missing_files(tmp_path, hub_cache):
    missing = tmp_path / "nowhere" / "open_clip_model.safetensors"
    with pytest.raises(FileNotFoundError, match=re.escape(f"CLIP checkpoint not found: {missing}")):
        load(TINY, pretrained=str(missing))
    with pytest.raises(FileNotFoundError, match=re.escape(f"CLIP folder not found: {tmp_path / 'none'}")):
        load(TINY, clip_model=f"local-dir:{tmp_path / 'none'}")
    with pytest.raises(FileNotFoundError, match=re.escape(f"open_clip_config.json not found at {tmp_path}")):
        load(TINY, clip_model=f"local-dir:{tmp_path}")
    with pytest.raises(ValueError, match=r"could not load CLIP 'hf-hub:tgcnet-test/nowhere': open_clip_config.json "
                                         r"unavailable \(HF_HUB_OFFLINE is set and it is not in the local Hugging Face "
                                         r"cache\); download it once \(hf download tgcnet-test/nowhere\) "
                                         r"or pass clip_model='local-dir:<folder>'"):
        load(TINY, clip_model="hf-hub:tgcnet-test/nowhere")
