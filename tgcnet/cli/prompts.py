"""``tgcnet prompts generate | show``: build or inspect the knowledge cache of concept descriptions.

Needs only tgcnet.prompts (no torch, no model), so these commands start fast. Errors the
user must fix (a missing captions file, a damaged cache, an unreachable endpoint) exit 2;
a chat endpoint that keeps answering badly exits 1, with finished concepts saved.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tgcnet.prompts.cache import KnowledgeCache, load_cache
from tgcnet.prompts.concepts import all_concepts, concept_kind, extract_concepts
from tgcnet.prompts.generate import generate_cache
from tgcnet.prompts.generation_errors import EndpointUnreachableError, GenerationError
from tgcnet.prompts.harvest import harvest_captions
from tgcnet.prompts.prompt_templates import load_templates

from .common import CommandError

__all__ = ["add_parser", "cmd_generate", "cmd_show", "format_cache"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `prompts` command (with `generate` and `show`) to an existing subparsers object."""
    parser = subparsers.add_parser("prompts", help="generate or inspect the knowledge cache of concept descriptions",
                                   description="Generate or inspect the knowledge cache of concept descriptions.")
    parser.set_defaults(func=lambda args: _usage(parser))
    sub = parser.add_subparsers(dest="prompts_command", metavar="{generate,show}")
    _add_generate(sub)
    _add_show(sub)
    return parser


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="ask a chat model for descriptions of the concepts in some captions",
                       description="Extract concepts from captions and ask an OpenAI-compatible chat endpoint for "
                                   "K descriptions of each. Finished concepts are saved at once; rerun to resume. "
                                   "The API key is read from the environment variable named by --api-key-env.")
    p.add_argument("--captions", required=True, type=Path,
                   help="CSV (Description column), XLSX, annotation.json, text file (one caption per line), "
                        "or a data directory")
    p.add_argument("--model", required=True, help="model name the endpoint knows, e.g. gpt-4o-mini")
    p.add_argument("--out", required=True, type=Path, help="cache file to create or extend (JSON)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    p.add_argument("-k", "--k", type=int, default=4, help="descriptions per concept (default 4)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    p.add_argument("--max-retries", type=int, default=5, help="retries per concept on 429/5xx/timeouts (default 5)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    p.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds, doubled each retry")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (endpoint default if unset)")
    p.add_argument("--concept", action="append", default=[], metavar="KEY",
                   help="extra concept key to generate, e.g. 'modality:chest x-ray' (repeatable)")
    p.add_argument("--all-concepts", action="store_true", help="generate every concept the extractor knows")
    p.add_argument("--templates", type=Path, default=None, help="directory with system.txt and user.txt")
    p.add_argument("--dry-run", action="store_true", help="list the concepts and exit; no request, no key needed")
    p.add_argument("-v", "--verbose", action="store_true", help="log retries and progress")
    p.set_defaults(func=cmd_generate)


def _add_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="print a knowledge cache readably",
                       description="Print each concept of a cache with its descriptions and provenance.")
    p.add_argument("cache", type=Path, help="cache file (JSON)")
    p.add_argument("--concept", default=None, metavar="PREFIX", help="only concepts whose key starts with PREFIX")
    p.set_defaults(func=cmd_show)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# --------------------------------------------------------------------------- generate

def _concepts_from(args: argparse.Namespace) -> list[str]:
    """Concepts of every caption (first-seen order), then --concept extras; warns on captions naming none."""
    wanted: dict[str, None] = {}
    if args.all_concepts:
        wanted.update(dict.fromkeys(all_concepts()))
    captions = harvest_captions(args.captions)
    empty = 0
    for caption in captions:
        keys = extract_concepts(caption)
        empty += not keys
        wanted.update(dict.fromkeys(keys))
    for key in args.concept:
        concept_kind(key)
        wanted.setdefault(key, None)
    print(f"{len(captions)} distinct caption(s) from {args.captions} -> {len(wanted)} concept(s)")
    if empty:
        print(f"warning: {empty} caption(s) name no known concept", file=sys.stderr)
    return list(wanted)


def cmd_generate(args: argparse.Namespace) -> int:
    """Run generation. Already-finished concepts stay saved whatever fails.

    An unreachable endpoint exits 2, like other errors only the user can fix (a server to
    start, a --base-url to correct): retrying as is cannot succeed. An endpoint that
    answered but failed a concept after its retries exits 1: a rerun may succeed.
    """
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    concepts = _concepts_from(args)
    if args.dry_run:
        print("\n".join(concepts))
        return 0
    total = len(concepts)
    done = [0]

    def progress(concept: str, status: str) -> None:
        done[0] += 1
        print(f"[{done[0]}/{total}] {status:7s} {concept}", flush=True)

    extra = {} if args.temperature is None else {"temperature": args.temperature}
    try:
        report = generate_cache(
            concepts, args.model, args.out, base_url=args.base_url, api_key_env=args.api_key_env, k=args.k,
            concurrency=args.concurrency, max_retries=args.max_retries, timeout=args.timeout,
            backoff_base=args.backoff, templates=load_templates(args.templates) if args.templates else None,
            request_kwargs=extra, on_progress=progress)
    except EndpointUnreachableError as exc:
        raise CommandError(str(exc), exit_code=2) from None
    except GenerationError as exc:
        raise CommandError(str(exc), exit_code=1) from None
    print(f"generated {len(report.generated)}, already cached {len(report.skipped)}; "
          f"{len(report.cache)} concept(s) in {report.path}")
    return 0


# --------------------------------------------------------------------------- show

def format_cache(cache: KnowledgeCache, path: Path | str, prefix: str | None = None) -> str:
    """Readable text: a header, then per concept its provenance line and its descriptions."""
    keys = [k for k in cache if prefix is None or k.startswith(prefix)]
    n_desc = sum(len(cache[k].descriptions) for k in keys)
    lines = [f"{path}: {len(keys)} concept(s), {n_desc} description(s)"]
    if cache.note:
        lines.append(f"note: {cache.note}")
    for key in keys:
        entry = cache[key]
        prov = entry.provenance
        lines += ["", key,
                  f"  generator: {prov.generator} | endpoint: {prov.endpoint or '-'} | "
                  f"template: {prov.template_hash or '-'} | date: {prov.date}"]
        lines += [f"  - {d}" for d in entry.descriptions]
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    """Print a cache; a damaged or too new one is a CacheError (a ValueError: exit 2)."""
    cache = load_cache(args.cache)
    print(format_cache(cache, args.cache, args.concept))
    return 0
