"""tgcnet.prompts: medical concept knowledge for DATE (the "D" of the text encoder).

Captions name concepts (`extract_concepts`; locations through `parse_location`, the one
location grammar, which the guidance masks read too); a `KnowledgeBank` maps them to short
medical descriptions that the text tower encodes next to the caption. Descriptions come from a
versioned JSON cache, generated once through an OpenAI-compatible endpoint
(`generate_cache`, ``tgcnet prompts generate``), or from the hand-written default bank
shipped here (`load_default_bank`). Nothing in this package imports the model.
"""
from .bank import KnowledgeBank, load_default_bank
from .cache import (
    SCHEMA_VERSION,
    CacheEntry,
    CacheError,
    KnowledgeCache,
    Provenance,
    load_cache,
    save_cache,
)
from .concepts import LOCATION_KINDS, all_concepts, concept_kind, extract_concepts
from .generate import GenerationReport, generate_cache
from .generation_errors import EndpointUnreachableError, GenerationError, MalformedReplyError
from .locations import LocationPart, LocationSpec, parse_location
from .prompt_templates import PromptTemplates, load_templates

__all__ = [
    "SCHEMA_VERSION",
    "CacheEntry",
    "CacheError",
    "EndpointUnreachableError",
    "GenerationError",
    "GenerationReport",
    "KnowledgeBank",
    "KnowledgeCache",
    "LOCATION_KINDS",
    "LocationPart",
    "LocationSpec",
    "MalformedReplyError",
    "PromptTemplates",
    "Provenance",
    "all_concepts",
    "concept_kind",
    "extract_concepts",
    "generate_cache",
    "load_cache",
    "load_default_bank",
    "load_templates",
    "parse_location",
    "save_cache",
]
