"""Saving and loading TGCNet: huggingface_hub's ``PyTorchModelHubMixin``, through its hooks.

As segmentation_models_pytorch's ``SMPHubMixin`` does, :class:`TGCNetHubMixin` keeps the
mixin's ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` (their arguments, the
directory-or-Hub lookup, the Hugging Face cache) and fills in what a TGCNet saves:
``config.json`` plus ``model.safetensors`` of the trainable weights only (the frozen CLIP is
rebuilt from the config), and the text tower's LoRA adapter once more in peft's own format
under ``text_adapter/``, so peft alone can put it on the bare open_clip text tower.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

import torch
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
from huggingface_hub.utils import validate_repo_id

from tgcnet.adapters import lora_layers, save_adapter
from tgcnet.config import TGCNetConfig
from tgcnet.date import KnowledgeSource
from tgcnet.io import load_json, load_safetensors, save_json_atomic, save_safetensors_atomic

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: the text tower's LoRA adapter in peft's format (adapter_config.json + adapter_model.safetensors)
TEXT_ADAPTER_DIR = "text_adapter"
MODEL_CARD_NAME = "README.md"
FORMAT_VERSION = 1
#: the knowledge a TGCNet is built, and reloaded, with unless told otherwise: the bank shipped
#: with tgcnet (see :func:`tgcnet.model.resolve_knowledge`)
DEFAULT_KNOWLEDGE = "default"
KnowledgeArg = Union[KnowledgeSource, str, None]

#: the README.md that ``push_to_hub`` uploads beside the weights (huggingface_hub's template syntax)
MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# TGC-Net

Text-guided medical image segmentation on a frozen CLIP, made with the `tgcnet` library
(paper: {{ paper_url }}). This repository holds the trainable weights only
(`model.safetensors`) and `config.json`; the frozen CLIP towers are rebuilt from the
config's `clip` section.

```python
from tgcnet import TGCNet

model = TGCNet.from_pretrained("{{ repo_id | default("<this repository>", true) }}")
# if the CLIP checkpoint recorded in config.json lives elsewhere on your machine:
# model = TGCNet.from_pretrained("...", pretrained="/path/to/clip/checkpoint")
```
"""

ModelT = TypeVar("ModelT", bound="TGCNetHubMixin")


class TGCNetHubMixin(PyTorchModelHubMixin, library_name="tgcnet", pipeline_tag="image-segmentation",
                     license="mit", paper_url="https://arxiv.org/abs/2512.21135",
                     tags=["medical-imaging", "clip", "lora", "text-guided-segmentation"],
                     model_card_template=MODEL_CARD_TEMPLATE):
    """The mixin TGCNet saves and loads through: it relies on the model's ``config``
    (:class:`TGCNetConfig`), ``trainable_state_dict`` / ``load_trainable_state_dict`` and
    ``date.text_tower``."""

    def save_pretrained(self, save_directory: str | Path, *, config: Optional[dict] = None,
                        repo_id: Optional[str] = None, push_to_hub: bool = False,
                        model_card_kwargs: Optional[dict[str, Any]] = None, **push_to_hub_kwargs: Any
                        ) -> Union[Path, str]:
        """``config.json`` + ``model.safetensors`` of the trainable weights only, each written
        atomically (temp file + rename), so a crash mid-save never leaves a truncated file. The
        mixin first removes an existing ``config.json``: to replace a save all or nothing, save
        into a new directory and rename it (as the training checkpoints do).

        The frozen CLIP is not copied: ``config.json`` records where it came from (a checkpoint
        path, an hf-hub id, or the seed of a random init). A model card (``README.md``) is
        written when ``model_card_kwargs`` is given (``push_to_hub`` always gives it), so a
        training run's checkpoints hold the model alone. ``push_to_hub=True`` uploads to
        ``repo_id`` (default: the folder's name) and returns the commit URL; otherwise the
        directory is returned. The mixin's ``config`` argument is refused: the saved config is
        always the model's own (``model.config``), the one that rebuilds it.
        """
        if config is not None:
            raise ValueError("save_pretrained writes the model's own config (model.config), the one that "
                             "rebuilds it; do not pass config=. To save another configuration, build a model "
                             "from it (TGCNet(config)) and save that")
        directory = Path(save_directory)
        card = directory / MODEL_CARD_NAME
        keep_card = model_card_kwargs is not None or card.exists()
        super().save_pretrained(directory, model_card_kwargs=model_card_kwargs)
        if not keep_card:   # the mixin writes a card on every save; a plain save is the model alone
            card.unlink(missing_ok=True)
        if push_to_hub:
            return self.push_to_hub(repo_id or directory.name, model_card_kwargs=model_card_kwargs,
                                    **push_to_hub_kwargs)
        return directory

    def _save_pretrained(self, save_directory: Path) -> None:
        """The weights first, then the config that names them, so a config.json is never newer
        than the weights beside it."""
        meta = {"format_version": FORMAT_VERSION, "library": "tgcnet"}
        save_safetensors_atomic(self.trainable_state_dict(), save_directory / WEIGHTS_NAME,
                                metadata={"format": "pt", **{k: str(v) for k, v in meta.items()}})
        save_json_atomic({**meta, "config": self.config.to_dict()}, save_directory / CONFIG_NAME)
        if lora_layers(self.date.text_tower):
            save_adapter(self.date.text_tower, save_directory / TEXT_ADAPTER_DIR)

    def push_to_hub(self, repo_id: str, *, model_card_kwargs: Optional[dict[str, Any]] = None,
                    **kwargs: Any) -> str:
        """Upload what ``save_pretrained`` writes, plus a model card whose loading snippet names
        ``repo_id`` (huggingface_hub's ``push_to_hub``: ``token``, ``private``, ``branch``,
        ``create_pr``...)."""
        card = {"repo_id": repo_id, **(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=card, **kwargs)

    @classmethod
    def from_pretrained(cls: type[ModelT], pretrained_model_name_or_path: str | Path,
                        pretrained: Optional[str] = None, knowledge: KnowledgeArg = DEFAULT_KNOWLEDGE,
                        map_location: str | torch.device = "cpu", *, revision: Optional[str] = None,
                        cache_dir: str | Path | None = None, force_download: bool = False,
                        token: str | bool | None = None, local_files_only: bool = False) -> ModelT:
        """Rebuild a model saved with :meth:`save_pretrained`, from a directory or a Hub repo.

        ``pretrained_model_name_or_path``: a directory written by ``save_pretrained``, or a
        Hugging Face Hub repo id (``"org/name"``) fetched through ``hf_hub_download`` (and its
        cache: with ``HF_HUB_OFFLINE=1`` a repo must already be cached). ``pretrained``
        overrides the recorded CLIP checkpoint path (the run moved machines); ``knowledge`` as
        in :func:`tgcnet.create_model`; the model is moved to ``map_location``. ``revision``,
        ``cache_dir``, ``force_download``, ``token`` and ``local_files_only`` go to the Hub download.
        """
        model_id = str(pretrained_model_name_or_path)
        if not os.path.isdir(model_id) and not is_hub_repo_id(model_id):
            raise FileNotFoundError(f"{CONFIG_NAME} (a directory written by save_pretrained) not found: {model_id} "
                                    "is no directory, nor a Hugging Face Hub repo id (owner/name)")
        try:
            return super().from_pretrained(model_id, revision=revision, cache_dir=cache_dir,
                                           force_download=force_download, token=token,
                                           local_files_only=local_files_only, pretrained=pretrained,
                                           knowledge=knowledge, map_location=map_location)
        except LocalEntryNotFoundError as exc:   # the mixin's own look-up of config.json, uncached offline
            raise FileNotFoundError(_not_fetched(model_id, CONFIG_NAME, exc)) from exc

    @classmethod
    def _from_pretrained(cls: type[ModelT], *, model_id: str, revision: Optional[str],
                         cache_dir: str | Path | None, force_download: bool, local_files_only: bool,
                         token: str | bool | None, config: Optional[dict] = None,
                         pretrained: Optional[str] = None, knowledge: KnowledgeArg = DEFAULT_KNOWLEDGE,
                         map_location: str | torch.device = "cpu") -> ModelT:
        """Rebuild the frozen CLIP and the modules from config.json, then load the trainable weights.

        The mixin passes only config.json's ``config`` entry (as ``config``); the file is read
        here whole (a cache hit for a Hub repo) for the ``format_version`` beside it.
        """
        hub = {"revision": revision, "cache_dir": cache_dir, "force_download": force_download,
               "local_files_only": local_files_only, "token": token}
        config_path = _saved_file(model_id, CONFIG_NAME, hub)
        model_config = _read_config(config_path)
        if model_config.date.use_knowledge and knowledge is None:
            raise ValueError(f"the model in {model_id} was trained with knowledge descriptions "
                             "(date.use_knowledge is true) and needs them: load it with knowledge='default' (the "
                             "shipped bank) or the knowledge cache or source it was trained with")
        if pretrained is not None:
            model_config.clip.pretrained = pretrained
        model = cls(model_config, knowledge=knowledge)
        weights = load_safetensors(_saved_file(model_id, WEIGHTS_NAME, hub))
        model.load_trainable_state_dict(weights, source=model_id)
        return model.to(map_location)


def is_hub_repo_id(model_id: str) -> bool:
    """Whether ``model_id`` can name a Hugging Face Hub repo (``name`` or ``owner/name``), so a
    path that is neither a directory nor a repo id is reported as a missing directory."""
    try:
        validate_repo_id(model_id)
    except HFValidationError:
        return False
    return True


def _saved_file(model_id: str, filename: str, hub: dict[str, Any]) -> str:
    """``filename`` of a saved model, resolved as the mixin resolves it: in the directory
    ``model_id``, else from the Hub repo ``model_id`` through the Hugging Face cache."""
    if os.path.isdir(model_id):
        return os.path.join(model_id, filename)
    try:
        return hf_hub_download(repo_id=model_id, filename=filename, **hub)
    except (EntryNotFoundError, HfHubHTTPError) as exc:
        raise FileNotFoundError(_not_fetched(model_id, filename, exc)) from exc


def _not_fetched(model_id: str, filename: str, exc: Exception) -> str:
    """Why ``filename`` of the Hub repo ``model_id`` is not here, and what to do about it."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline:
        hint = (f"downloads are off (HF_HUB_OFFLINE) and it is not in the Hugging Face cache: run "
                f"`hf download {model_id}` where there is network, or pass a local directory")
    else:
        hint = "check the repo id, its revision and your access (token=), or pass a local directory"
    return (f"{filename} of {model_id!r} not found: there is no directory of that name here, and as a "
            f"Hugging Face Hub repo it could not be fetched ({type(exc).__name__}); {hint}")


def _read_config(path: str | Path) -> TGCNetConfig:
    """The model config of a config.json written by ``save_pretrained``, refusing a format newer
    than this tgcnet reads."""
    saved = load_json(path, f"{CONFIG_NAME} (a directory written by save_pretrained)")
    if not isinstance(saved, dict) or not isinstance(saved.get("format_version"), int) \
            or not isinstance(saved.get("config"), dict):
        raise ValueError(f"{path} is not a tgcnet config.json: expected 'format_version' and 'config', as "
                         "TGCNet.save_pretrained writes them; point from_pretrained at a directory it wrote")
    if saved["format_version"] > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {saved['format_version']}, newer than this tgcnet "
                         f"understands ({FORMAT_VERSION}); upgrade tgcnet")
    return TGCNetConfig.from_dict(saved["config"])
