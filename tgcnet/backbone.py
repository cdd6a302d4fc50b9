"""Where the CLIP comes from: build an open_clip model and split it into the two towers.

Kept apart from what the model *is* (open_clip's ``pretrained.py`` idea): the same
TGCNet config can wrap a random-init CLIP in tests, a local checkpoint on a cluster,
or an ``hf-hub:`` model on a workstation with a warm cache.
"""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

import open_clip
import torch
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import nn

from tgcnet.config import ClipConfig

logger = logging.getLogger(__name__)


class TextTower(nn.Module):
    """The open_clip text transformer as one module, whatever class held it.

    ``CLIP`` keeps its text modules as attributes of the whole model; ``CustomTextCLIP``
    keeps a ``TextTransformer``. Gathering them here gives LoRA a tower with no visual
    module in it and gives DATE token-level outputs, which open_clip's encode_text pools away.
    """

    def __init__(self, source: nn.Module, pool_type: str, eos_id: Optional[int], pad_id: int) -> None:
        super().__init__()
        self.token_embedding = source.token_embedding
        self.positional_embedding = source.positional_embedding
        self.transformer = source.transformer
        self.ln_final = source.ln_final
        self.text_projection = source.text_projection
        self.register_buffer("attn_mask", source.attn_mask, persistent=False)
        self.pool_type = pool_type
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.context_length = int(source.positional_embedding.shape[0])
        self.width = int(source.positional_embedding.shape[1])
        self.output_dim = self._output_dim()

    def _output_dim(self) -> int:
        proj = self.text_projection
        if proj is None:
            return self.width
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    def project(self, x: torch.Tensor) -> torch.Tensor:
        proj = self.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj.to(x.dtype)

    def pool_index(self, ids: torch.Tensor) -> torch.Tensor:
        """Index of the token whose feature is the sentence embedding (EOT for CLIP)."""
        if self.pool_type == "argmax":
            return ids.argmax(dim=-1)
        if self.pool_type == "eos":
            return (ids == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "first":
            return torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        return (ids != self.pad_id).sum(dim=-1) - 1  # "last": last non-pad token

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token features and pooled embedding, both in the joint space.

        ``ids`` may be shorter than the context: with a causal mask, positions up to
        EOT see only earlier positions, so trailing padding can be cut without changing
        any output that is used, which makes short medical captions much cheaper.
        """
        length = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:length].to(self.token_embedding.weight.dtype)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        x = self.transformer(x, attn_mask=mask)
        tokens = self.project(self.ln_final(x))
        pooled = tokens[torch.arange(ids.shape[0], device=ids.device), self.pool_index(ids)]
        return tokens, pooled


@dataclass
class ClipTowers:
    visual: VisionTransformer
    text: TextTower
    tokenizer: Any
    embed_dim: int


def load_clip(cfg: ClipConfig) -> ClipTowers:
    """Build the open_clip model named by ``cfg`` and return its towers and tokenizer."""
    model, tokenizer = _build(cfg)
    return _split(model, tokenizer, cfg.model_name)


def _build(cfg: ClipConfig) -> tuple[nn.Module, Any]:
    name = cfg.model_name
    if name.startswith(("hf-hub:", "local-dir:")):
        if cfg.pretrained:
            raise ValueError(f"clip.pretrained={cfg.pretrained!r} cannot be combined with clip.model_name={name!r}: "
                             "hf-hub:/local-dir: sources carry their own weights")
        try:
            model = open_clip.create_model(name)
            tokenizer = open_clip.get_tokenizer(name)
        except Exception as exc:  # open_clip wraps hub errors in RuntimeError
            offline = " (HF_HUB_OFFLINE is set and the model is not in the local cache)" \
                if os.environ.get("HF_HUB_OFFLINE") else ""
            raise ValueError(f"could not load CLIP {name!r}{offline}: {exc}") from exc
        return model, tokenizer
    model_cfg = _model_cfg(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        model = _instantiate(model_cfg)
    if cfg.pretrained:
        _load_weights(model, cfg.pretrained, name)
    context_length = model_cfg["text_cfg"].get("context_length", 77)
    if name == "custom":
        tokenizer = SimpleTokenizer(context_length=context_length)
    else:
        tokenizer = open_clip.get_tokenizer(name)
    return model, tokenizer


def _model_cfg(cfg: ClipConfig) -> dict:
    if cfg.model_cfg is not None:
        return copy.deepcopy(cfg.model_cfg)
    if cfg.model_name == "custom":
        raise ValueError("clip.model_name='custom' needs clip.model_cfg (an open_clip model config dict)")
    model_cfg = open_clip.get_model_config(cfg.model_name)
    if model_cfg is None:
        raise ValueError(f"unknown CLIP architecture {cfg.model_name!r}: not an open_clip model name "
                         f"(see open_clip.list_models()), an 'hf-hub:org/name' id or a 'local-dir:' path")
    return copy.deepcopy(model_cfg)


def _instantiate(model_cfg: dict) -> nn.Module:
    custom_text = model_cfg.pop("custom_text", False) or "hf_model_name" in model_cfg.get("text_cfg", {})
    model_cfg.pop("multimodal_cfg", None)
    cls = CustomTextCLIP if custom_text else CLIP
    return cls(**model_cfg)


def _load_weights(model: nn.Module, path: str, arch: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP checkpoint not found: {path}")
    try:
        open_clip.load_checkpoint(model, path)
    except RuntimeError as exc:
        raise ValueError(f"CLIP checkpoint {path} does not match architecture {arch!r}: "
                         f"{str(exc).splitlines()[0]}") from exc
    except Exception as exc:
        raise ValueError(f"could not read CLIP checkpoint {path}: {exc}") from exc


def _split(model: nn.Module, tokenizer: Any, name: str) -> ClipTowers:
    visual = model.visual
    if not isinstance(visual, VisionTransformer):
        raise ValueError(f"CLIP {name!r} has a {type(visual).__name__} image tower; tgcnet needs an "
                         "open_clip VisionTransformer (ViT) for dense patch features")
    if isinstance(model, CLIP):
        text = TextTower(model, model.text_pool_type, getattr(model, "text_eos_id", None), 0)
    elif isinstance(getattr(model, "text", None), TextTransformer) and model.text.cls_emb is None:
        t = model.text
        text = TextTower(t, t.pool_type, t.eos_id, t.pad_id)
    else:
        raise ValueError(f"CLIP {name!r} has a {type(getattr(model, 'text', None)).__name__} text tower; "
                         "tgcnet needs an open_clip TextTransformer without a CLS embedding")
    if not isinstance(tokenizer, SimpleTokenizer):
        logger.info("CLIP %s uses %s; over-long captions are truncated by it", name, type(tokenizer).__name__)
    return ClipTowers(visual=visual, text=text, tokenizer=tokenizer, embed_dim=int(visual.output_dim))
