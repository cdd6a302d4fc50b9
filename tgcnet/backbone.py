"""Where the CLIP comes from: build an open_clip model, load its weights, split it into towers.

Kept apart from what the model *is* (open_clip's ``pretrained.py`` idea): the same
TGCNet config can wrap a random-init CLIP in tests, a local checkpoint on a cluster,
or an ``hf-hub:`` model on a workstation with a warm cache. Nothing here downloads
unless the Hugging Face hub client is allowed to (``HF_HUB_OFFLINE`` unset).

Weights come from a checkpoint file (read by :mod:`tgcnet.clip_weights`, in every format
open_clip users have), an ``hf-hub:`` repo or ``local-dir:`` folder, or an open_clip
pretrained tag (``"openai"``, ``"laion2b_s34b_b88k"``) found in the cache. A tag saying so
and OpenAI's own file switch the towers to QuickGELU, which no tensor records.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import open_clip
import torch
from open_clip.hf_model import HFTextEncoder
from open_clip.model import CLIP, CustomTextCLIP
from torch import nn

from tgcnet import image_towers  # noqa: F401  registers the timm ViT the tiny presets name
from tgcnet.clip_weights import load_clip_state, read_clip_checkpoint
from tgcnet.config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipConfig
from tgcnet.text_towers import FrozenTextTower, text_tower
from tgcnet.tokenizer import TokenizerSource, tokenizer_source

logger = logging.getLogger(__name__)

HUB_CONFIG_NAME = "open_clip_config.json"
HUB_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass
class ClipTowers:
    visual: nn.Module            # the open_clip image tower (SSE picks its interface)
    text: FrozenTextTower
    tokenizer: TokenizerSource
    embed_dim: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]


@dataclass
class _Source:
    """An architecture, where its weights are, and its preprocessing, before anything is built."""

    model_cfg: dict
    weights: Optional[str] = None
    preprocess: Optional[dict] = None
    what: str = ""


def load_clip(cfg: ClipConfig) -> ClipTowers:
    """Build the open_clip model named by ``cfg``, load its weights, return towers and tokenizer."""
    source = _resolve(cfg)
    checkpoint = read_clip_checkpoint(source.weights) if source.weights else None
    if checkpoint is not None and checkpoint.openai and not source.model_cfg.get("quick_gelu"):
        # the activation is not in the weights: OpenAI trained every CLIP with QuickGELU, and
        # their file builds with it in open_clip's load_openai_model
        logger.info("%s is OpenAI's TorchScript CLIP: building %s with QuickGELU", source.weights, source.what)
        source.model_cfg["quick_gelu"] = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        model = instantiate(source.model_cfg)
    if checkpoint is not None:
        load_clip_state(model, checkpoint.state, source.weights)
    text_cfg = source.model_cfg.get("text_cfg", {})
    context_length = int(text_cfg.get("context_length", 77))
    text = text_tower(model, context_length)
    preprocess = source.preprocess or {}
    return ClipTowers(
        visual=model.visual, text=text, embed_dim=int(source.model_cfg["embed_dim"]),
        tokenizer=tokenizer_source(text_cfg, text.context_length, cfg.tokenizer, source.what),
        image_mean=tuple(cfg.image_mean or preprocess.get("mean") or OPENAI_CLIP_MEAN),
        image_std=tuple(cfg.image_std or preprocess.get("std") or OPENAI_CLIP_STD))


# ------------------------------------------------------------------ what to build, from where

def _resolve(cfg: ClipConfig) -> _Source:
    name = cfg.model_name
    own_weights = not cfg.pretrained   # pretrained= replaces the hub's / folder's weights: never fetch those
    if name.startswith("hf-hub:"):
        source = _hub_source(name[len("hf-hub:"):], own_weights)
    elif name.startswith("local-dir:"):
        source = _folder_source(Path(name[len("local-dir:"):]), own_weights)
    else:
        source = _Source(model_cfg=_named_model_cfg(cfg), what="this CLIP" if name == "custom" else f"CLIP {name!r}")
    if cfg.pretrained:
        source.weights = _weights_path(cfg.pretrained, name, source)
    return source


def _named_model_cfg(cfg: ClipConfig) -> dict:
    if cfg.model_cfg is not None:
        return copy.deepcopy(cfg.model_cfg)
    if cfg.model_name == "custom":
        raise ValueError("clip.model_name='custom' needs clip.model_cfg (an open_clip model config dict)")
    model_cfg = open_clip.get_model_config(cfg.model_name)
    if model_cfg is None:
        raise ValueError(f"unknown CLIP architecture {cfg.model_name!r}: not an open_clip model name "
                         f"(see open_clip.list_models()), an 'hf-hub:org/name' id or a 'local-dir:' path")
    return copy.deepcopy(model_cfg)


def _hub_file(repo: str, filename: str) -> Optional[str]:
    """A hub file from the local cache, or downloaded where the hub client may; None if neither."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo, filename)
    except Exception as exc:  # offline misses, 404s and network errors all mean "not available here"
        logger.debug("hub file %s/%s unavailable: %s", repo, filename, exc)
        return None


def _offline_hint() -> str:
    from huggingface_hub import constants

    # the flag the hub client read at import (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE), or one set since
    offline = getattr(constants, "HF_HUB_OFFLINE", False) or \
        os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    if offline:
        return "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
    return "the hub could not be reached and it is not in the local Hugging Face cache"


def _hub_source(repo: str, with_weights: bool = True) -> _Source:
    config_path = _hub_file(repo, HUB_CONFIG_NAME)
    if config_path is None:
        raise ValueError(f"could not load CLIP 'hf-hub:{repo}': {HUB_CONFIG_NAME} unavailable ({_offline_hint()}); "
                         f"download it once (hf download {repo}) or pass clip_model='local-dir:<folder>'")
    source = _config_file_source(Path(config_path), f"CLIP 'hf-hub:{repo}'")
    if not with_weights:
        return source
    weights = next((p for p in (_hub_file(repo, n) for n in HUB_WEIGHT_NAMES) if p), None)
    if weights is None:
        raise ValueError(f"could not load the weights of CLIP 'hf-hub:{repo}': none of {', '.join(HUB_WEIGHT_NAMES)} "
                         f"is available ({_offline_hint()})")
    source.weights = weights
    return source


def _folder_source(folder: Path, with_weights: bool = True) -> _Source:
    if not folder.is_dir():
        raise FileNotFoundError(f"CLIP folder not found: {folder}")
    source = _config_file_source(folder / HUB_CONFIG_NAME, f"CLIP 'local-dir:{folder}'")
    if not with_weights:
        return source
    source.weights = next((str(folder / n) for n in HUB_WEIGHT_NAMES if (folder / n).is_file()), None)
    if source.weights is None:
        raise FileNotFoundError(f"CLIP folder {folder} holds none of {', '.join(HUB_WEIGHT_NAMES)}")
    return source


def _config_file_source(path: Path, what: str) -> _Source:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path.name} not found at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model_cfg = data["model_cfg"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{what}: {path} is not an open_clip config (needs 'model_cfg'): {exc}") from exc
    return _Source(model_cfg=model_cfg, preprocess=data.get("preprocess_cfg"), what=what)


def _weights_path(pretrained: str, name: str, source: _Source) -> str:
    """A checkpoint path as given, or an open_clip pretrained tag resolved through the hub cache."""
    if os.path.sep in pretrained or os.path.exists(pretrained) or Path(pretrained).suffix:
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"CLIP checkpoint not found: {pretrained}")
        return pretrained
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained) if not name.startswith(("hf-hub:", "local-dir:")) else {}
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(name) if name in open_clip.list_models() else []
        raise FileNotFoundError(f"CLIP checkpoint not found: {pretrained!r} is neither a file nor a pretrained tag of "
                                f"{name!r} (tags: {', '.join(tags) or 'none'})")
    if tag_cfg.get("quick_gelu"):   # OpenAI's weights were trained with QuickGELU
        source.model_cfg["quick_gelu"] = True
    source.preprocess = {"mean": tag_cfg.get("mean"), "std": tag_cfg.get("std")}
    repo, filenames = _tag_hub_files(tag_cfg.get("hf_hub") or "")
    path = next((p for p in (_hub_file(repo, f) for f in filenames) if p), None) if repo else None
    if path is None:
        if not repo:   # a tag with only a URL: tgcnet reads the hub cache, never URLs
            raise ValueError(f"CLIP weights {name!r} / {pretrained!r} are not on the Hugging Face hub: download "
                             f"{tag_cfg.get('url') or 'them'} and pass pretrained=/path/to/checkpoint")
        raise ValueError(f"CLIP weights {name!r} / {pretrained!r} (hub repo {repo}, file {' or '.join(filenames)}) "
                         f"are not available: {_offline_hint()}; download once (hf download {repo}) "
                         "or pass pretrained=/path/to/checkpoint")
    return path


def _tag_hub_files(hf_hub: str) -> tuple[str, tuple[str, ...]]:
    """A tag's ``hf_hub`` as open_clip reads it, as a repo id and the files to try in turn:
    ``org/name/`` means open_clip's default files, ``org/name/file.bin`` that file (its
    ``.safetensors`` twin first, as open_clip prefers)."""
    parts = hf_hub.strip("/").split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    if not filename or filename == HUB_WEIGHT_NAMES[1]:
        return repo, HUB_WEIGHT_NAMES
    if filename.endswith((".bin", ".pth")):
        return repo, (filename[:-4] + ".safetensors", filename)
    return repo, (filename,)


# ------------------------------------------------------------------ building

def instantiate(model_cfg: dict) -> nn.Module:
    """An open_clip ``CLIP`` / ``CustomTextCLIP`` from a model config, built offline.

    open_clip builds an ``HFTextEncoder`` by fetching its transformers config by name; here
    that config comes from ``text_cfg.hf_model_config`` (presets carry it), a local folder or
    the hub cache, so a BiomedCLIP-shaped model builds with no network.
    """
    model_cfg = copy.deepcopy(model_cfg)
    text_cfg = model_cfg.get("text_cfg", {})
    custom_text = model_cfg.pop("custom_text", False) or bool(text_cfg.get("hf_model_name"))
    model_cfg.pop("multimodal_cfg", None)
    if not text_cfg.get("hf_model_name"):
        return (CustomTextCLIP if custom_text else CLIP)(**model_cfg)
    hf_config = _hf_text_config(text_cfg)
    # a one-layer placeholder text tower, replaced at once by the HF encoder
    placeholder = {"context_length": 2, "vocab_size": 2, "width": 8, "heads": 1, "layers": 1}
    model = CustomTextCLIP(**{**model_cfg, "text_cfg": placeholder})
    pooler = text_cfg.get("hf_pooler_type", "mean_pooler")
    model.text = HFTextEncoder(text_cfg["hf_model_name"], output_dim=int(model_cfg["embed_dim"]), config=hf_config,
                               pooler_type=pooler, proj_type=text_cfg.get("hf_proj_type", "mlp"))
    if text_cfg.get("hf_model_pretrained") is True:
        model.text.transformer = _pretrained_hf_encoder(text_cfg["hf_model_name"], pooler == "cls_pooler")
    elif pooler != "cls_pooler" and getattr(model.text.transformer, "pooler", None) is not None:
        model.text.transformer.pooler = None   # what open_clip builds (add_pooling_layer=False)
    return model


def _pretrained_hf_encoder(name: str, with_pooler: bool) -> nn.Module:
    """``text_cfg.hf_model_pretrained: true``: the encoder's own weights, from a folder or the cache
    (a CLIP checkpoint loaded afterwards overwrites them; open_clip's default, only when asked here)."""
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(name, add_pooling_layer=with_pooler)
    except Exception as exc:
        raise ValueError(f"text_cfg.hf_model_pretrained is true but the weights of {name!r} are not available "
                         f"({_offline_hint()}): {type(exc).__name__}: {exc}") from exc


def _hf_text_config(text_cfg: dict) -> Any:
    from transformers import AutoConfig

    inline = text_cfg.get("hf_model_config")
    if inline is not None and text_cfg.get("hf_model_pretrained") is not True:
        inline = dict(inline)
        return AutoConfig.for_model(inline.pop("model_type"), **inline)
    name = text_cfg["hf_model_name"]
    try:
        return AutoConfig.from_pretrained(name)
    except Exception as exc:
        known = _known_hf_configs().get(name)
        if known is not None:
            known = dict(known)
            return AutoConfig.for_model(known.pop("model_type"), **known)
        raise ValueError(f"the text tower's transformers config {name!r} is not available ({_offline_hint()}): "
                         "add it to clip.model_cfg.text_cfg.hf_model_config or download it once") from exc


def _known_hf_configs() -> dict[str, dict]:
    """``hf_model_name`` -> ``hf_model_config`` from the shipped presets (BiomedCLIP's BERT)."""
    from tgcnet.config import get_preset, list_presets

    known = {}
    for preset in list_presets():
        text_cfg = (get_preset(preset).clip.model_cfg or {}).get("text_cfg", {})
        if text_cfg.get("hf_model_name") and text_cfg.get("hf_model_config"):
            known[text_cfg["hf_model_name"]] = text_cfg["hf_model_config"]
    return known
