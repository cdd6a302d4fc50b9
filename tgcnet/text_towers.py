"""The text towers DATE reads: one small interface per kind of CLIP text tower.

DATE never looks inside open_clip. A text tower turns token ids (B, L) into token features
in CLIP's joint space (B, L, D) and the pooled sentence embedding (B, D) exactly as open_clip
pools it (``encode_text``; the parity tests check it), and says which tokens are real
(:meth:`FrozenTextTower.token_mask`) and how to pool joint-space tokens again after DATE or
VLCM changed them (:meth:`FrozenTextTower.pool_weights`). Each tower also names the LoRA
targets that suit its layer names (``date.lora.targets="auto"``).

Two kinds: open_clip's own ``TextTransformer`` (inside ``CLIP`` or ``CustomTextCLIP``) and
``HFTextEncoder`` over a transformers encoder (BiomedCLIP's PubMedBERT, other BERT/RoBERTa).
"""
from __future__ import annotations

from typing import Optional

import torch
from open_clip.hf_model import ClsLastHiddenStatePooler, ClsPooler, HFTextEncoder, MaxPooler, MeanPooler
from open_clip.model import CLIP
from open_clip.transformer import TextTransformer
from torch import nn

from tgcnet.adapters import lora_parameters

#: LoRA target presets ("auto" picks one per tower), as regexes over names inside the tower
OPEN_CLIP_TEXT_TARGETS = "open_clip_text"
HF_BERT_TEXT_TARGETS = "hf_bert_text"
#: transformers model types whose layers use BERT's names
_BERT_LIKE = ("bert", "roberta", "xlm-roberta", "camembert", "distilroberta", "electra")


class FrozenTextTower(nn.Module):
    """What DATE needs of a CLIP text tower; subclasses wrap one open_clip tower type."""

    context_length: int   # tokens the tower takes, start and end tokens included
    width: int            # hidden width
    output_dim: int       # D, the joint image-text space
    pad_id: int
    lora_targets: str     # the LoRA target preset that suits this tower
    #: whether padding after a text's pooled token can be cut without changing any used output
    #: (a causal tower pooling at EOT); otherwise texts are padded as the tower was trained
    trims_padding: bool = False
    #: pad every batch to the full context (towers trained on full-length padded input)
    pads_to_context: bool = False
    transformer: nn.Module   # the encoder blocks: where the tower's GEMMs, hence its CPU time, are

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def frozen_state_names(self) -> list[str]:
        """Names (inside this tower) of the state that never trains and is never saved: all of it
        but the LoRA adapters' weights, which DATE trains and ``save_pretrained`` keeps."""
        adapters = set(lora_parameters(self))
        return [name for name in self.state_dict() if name not in adapters]

    def frozen_linears(self) -> list[nn.Linear]:
        """The transformer's frozen linear layers: the tower's GEMMs, which a caller may route to the
        kernel fastest on its machine (:func:`tgcnet.accel.optimize_for_cpu`). LoRA's base layers
        are among them; its adapters, which DATE trains, are not."""
        return [m for name, m in self.transformer.named_modules()
                if isinstance(m, nn.Linear) and not _is_lora_adapter(name)]

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token features (B, L, D) and pooled embedding (B, D), both in the joint space."""
        raise NotImplementedError

    def token_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: the tokens that carry the text (keys other modules may attend to)."""
        raise NotImplementedError

    def pool_weights(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) weights that pool joint-space tokens as this tower pools (one-hot or mean)."""
        raise NotImplementedError


def _is_lora_adapter(name: str) -> bool:
    """Whether a qualified module name lies inside a peft LoRA adapter (``...in_proj.lora_A.default``)."""
    return any(part.startswith("lora_") for part in name.split("."))


def pool_tokens(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, L, D) tokens pooled with (B, L) weights; exact for one-hot weights."""
    return torch.einsum("bl,bld->bd", weights.to(tokens.dtype), tokens)


class OpenClipTextTower(FrozenTextTower):
    """open_clip's ``TextTransformer`` as one module, whatever class held it.

    ``CLIP`` keeps its text modules as attributes of the whole model; ``CustomTextCLIP``
    keeps a ``TextTransformer``. Gathering them here gives LoRA a tower with no visual
    module in it and gives DATE token-level outputs, which open_clip's encode_text pools away.
    """

    lora_targets = OPEN_CLIP_TEXT_TARGETS

    def __init__(self, source: nn.Module, pool_type: str, eos_id: Optional[int], pad_id: int) -> None:
        super().__init__()
        if getattr(source, "use_pad_mask", False):
            raise ValueError("open_clip text towers with a padding mask are not supported")
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
        causal = self.attn_mask is not None
        self.trims_padding = causal and pool_type in ("argmax", "eos", "first")
        # "last" pools the final position and a tower without causal mask sees its padding:
        # both were trained on full-context input (SigLIP), so they get it here too
        self.pads_to_context = not self.trims_padding

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
        return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)  # "last"

    def token_mask(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        pooled = positions[None, :] == self.pool_index(ids)[:, None]
        if self.trims_padding:   # start token up to the pooled (EOT) token
            return positions[None, :] <= self.pool_index(ids)[:, None]
        return (ids != self.pad_id) | pooled   # the pooled position may be padding ("last")

    def pool_weights(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(self.pool_index(ids), ids.shape[1]).float()

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``ids`` may be shorter than the context where ``trims_padding``: with a causal mask,
        positions up to EOT see only earlier positions, so trailing padding can be cut without
        changing any output that is used, which makes short medical captions much cheaper."""
        length = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:length].to(self.token_embedding.weight.dtype)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        x = self.transformer(x, attn_mask=mask)
        tokens = self.project(self.ln_final(x))
        pooled = tokens[torch.arange(ids.shape[0], device=ids.device), self.pool_index(ids)]
        return tokens, pooled


class HFTextTower(FrozenTextTower):
    """open_clip's ``HFTextEncoder``: a transformers encoder, a pooler and a projection.

    Token features are the last hidden states through the same head the pooled one takes
    (for ``cls_pooler`` with the encoder's pooler layer: its dense + activation, then the
    projection), so the pooled embedding is exactly open_clip's and the tokens live in the
    same joint space. After DATE or VLCM change the tokens they are pooled again as the
    tower pools: CLS one-hot, or the masked mean (``mean_pooler``; also for ``max_pooler``,
    whose maximum has no weights).
    """

    def __init__(self, encoder: HFTextEncoder, context_length: int) -> None:
        super().__init__()
        self.transformer = encoder.transformer
        self.proj = encoder.proj
        self.pooler = encoder.pooler
        config = encoder.config
        self.model_type = str(getattr(config, "model_type", ""))
        self.pad_id = int(config.pad_token_id if config.pad_token_id is not None else 0)
        positions = int(getattr(config, "max_position_embeddings", context_length) or context_length)
        self.context_length = min(int(context_length), positions)
        self.width = int(getattr(config, "hidden_size", 0) or getattr(config, "d_model", 0))
        self.output_dim = int(encoder.output_dim)
        self.lora_targets = HF_BERT_TEXT_TARGETS if self.model_type in _BERT_LIKE else ""
        if not isinstance(self.pooler, (MeanPooler, MaxPooler, ClsPooler, ClsLastHiddenStatePooler)):
            raise ValueError(f"HF text pooler {type(self.pooler).__name__} is not supported")
        self._pooler_layer = self._transformer_pooler()

    def _transformer_pooler(self) -> Optional[nn.Module]:
        """The encoder's own pooler layer, where open_clip pools through it."""
        layer = getattr(self.transformer, "pooler", None)
        if not (isinstance(self.pooler, ClsPooler) and self.pooler.use_pooler_output and layer is not None):
            return None
        if not (hasattr(layer, "dense") and hasattr(layer, "activation")):
            raise ValueError(f"cls_pooler over {type(layer).__name__} (no dense + activation) is not supported")
        return layer

    def _token_head(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._pooler_layer is not None:
            hidden = self._pooler_layer.activation(self._pooler_layer.dense(hidden))
        return self.proj(hidden)

    def token_mask(self, ids: torch.Tensor) -> torch.Tensor:
        return ids != self.pad_id

    def pool_weights(self, ids: torch.Tensor) -> torch.Tensor:
        if isinstance(self.pooler, (ClsPooler, ClsLastHiddenStatePooler)):
            return nn.functional.one_hot(torch.zeros_like(ids[:, 0]), ids.shape[1]).float()
        mask = self.token_mask(ids).float()
        return mask / mask.sum(dim=1, keepdim=True)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attention = self.token_mask(ids).long()
        out = self.transformer(input_ids=ids, attention_mask=attention)
        tokens = self._token_head(out.last_hidden_state)
        return tokens, self.proj(self.pooler(out, attention))


_SUPPORTED = ("supported text towers: open_clip's TextTransformer (without a CLS embedding) and HFTextEncoder "
              "(transformers encoders such as BERT/RoBERTa)")


def text_tower(model: nn.Module, context_length: int) -> FrozenTextTower:
    """The :class:`FrozenTextTower` of an open_clip CLIP, chosen by its text tower's type."""
    if isinstance(model, CLIP):
        return OpenClipTextTower(model, model.text_pool_type, getattr(model, "text_eos_id", None), 0)
    text = getattr(model, "text", None)
    if isinstance(text, TextTransformer) and text.cls_emb is None:
        return OpenClipTextTower(text, text.pool_type, text.eos_id, text.pad_id)
    if isinstance(text, HFTextEncoder):
        return HFTextTower(text, context_length)
    raise ValueError(f"the CLIP text tower is a {type(text).__name__}; {_SUPPORTED}")
