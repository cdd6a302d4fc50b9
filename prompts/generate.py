"""Generate concept descriptions through an OpenAI-compatible chat endpoint into the cache: the run.

Why it is built this way:

* Every finished concept is written to the cache file at once (atomically), so a run that
  is killed or fails loses nothing, and the next run skips what is already there
  (same template hash) and asks only for the rest.
* Concepts go to a small thread pool, at most `concurrency` in flight; the first final error
  stops new ones from starting, and the run ends with one error for all failures.
* Asking for one concept (the client, the API key, retries and backoff) is :mod:`.chat`'s
  job; reading the reply is :mod:`.replies`'.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .cache import KnowledgeCache, Provenance, load_cache, save_cache
from .chat import Requester, Stopped, endpoint_host, open_client
from .concepts import concept_kind
from .generation_errors import EndpointUnreachableError, GenerationError, MalformedReplyError
from .prompt_templates import PromptTemplates, load_templates

__all__ = ["GenerationReport", "generate_cache"]

log = logging.getLogger(__name__)


@dataclass
class GenerationReport:
    """What a run did: `generated` were requested now, `skipped` were already cached."""

    cache: KnowledgeCache
    path: Path
    generated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _check_args(k: int, concurrency: int, max_retries: int, timeout: float) -> None:
    if k < 1 or concurrency < 1 or max_retries < 0 or timeout <= 0:
        raise ValueError(f"need k >= 1, concurrency >= 1, max_retries >= 0, timeout > 0; got k={k}, "
                         f"concurrency={concurrency}, max_retries={max_retries}, timeout={timeout}")


def _unique_concepts(concepts: Iterable[str]) -> list[str]:
    out: list[str] = []
    for c in concepts:
        concept_kind(c)  # validates the key form
        if c not in out:
            out.append(c)
    return out


def generate_cache(
    concepts: Iterable[str],
    model: str,
    out_path: str | Path,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    k: int = 4,
    concurrency: int = 4,
    max_retries: int = 5,
    timeout: float = 60.0,
    *,
    backoff_base: float = 1.0,
    backoff_max: float = 60.0,
    templates: PromptTemplates | None = None,
    request_kwargs: Mapping[str, Any] | None = None,
    on_progress: Callable[[str, str], None] | None = None,
) -> GenerationReport:
    """Ask `model` for `k` descriptions of each concept and store them in the cache at `out_path`.

    Concepts already cached with the same template hash are skipped, so rerunning after a
    failure resumes. Each finished concept is saved at once. On the first final error
    (retries spent, request refused, malformed reply) no new concept is started, the ones
    in flight finish and are saved, and GenerationError is raised naming the concept.
    `request_kwargs` go to ``chat.completions.create`` (temperature, max_tokens, ...);
    `on_progress(concept, "ok" | "skipped")` lets a CLI show progress.
    """
    _check_args(k, concurrency, max_retries, timeout)
    out_path = Path(out_path)
    templates = templates or load_templates()
    thash = templates.hash
    cache = load_cache(out_path) if out_path.exists() else KnowledgeCache()
    wanted = _unique_concepts(concepts)
    report = GenerationReport(cache, out_path, skipped=[c for c in wanted if cache.is_current(c, thash)])
    for c in report.skipped:
        if on_progress:
            on_progress(c, "skipped")
    todo = [c for c in wanted if c not in report.skipped]
    if not todo:
        return report

    client, redact = open_client(base_url, api_key_env, timeout)
    try:
        endpoint = endpoint_host(str(client.base_url))
        requester = Requester(client, model, k, templates, max_retries, timeout, backoff_base, backoff_max,
                              dict(request_kwargs or {}), redact, threading.Event(), endpoint)
        log.info("generating %d concept(s) with %s at %s (%d cached)", len(todo), model, endpoint, len(report.skipped))
        failures = _run_pool(requester, todo, concurrency, lambda c, d: _store(report, c, d, Provenance(
            generator=model, endpoint=endpoint, template_hash=thash), on_progress))
    finally:
        client.close()
    if failures:
        raise _summary_error(failures, report, todo)
    return report


def _store(report: GenerationReport, concept: str, descriptions: list[str], provenance: Provenance,
           on_progress: Callable[[str, str], None] | None) -> None:
    """Save one finished concept right away: that is what makes a resumed run lose nothing."""
    report.cache.set(concept, descriptions, provenance)
    save_cache(report.cache, report.path)
    report.generated.append(concept)
    log.info("concept %r: %d description(s) saved", concept, len(descriptions))
    if on_progress:
        on_progress(concept, "ok")


def _run_pool(requester: Requester, todo: list[str], concurrency: int,
              store: Callable[[str, list[str]], None]) -> dict[str, GenerationError]:
    """Keep at most `concurrency` concepts in flight; store each result in this thread as it completes.

    Concepts are submitted only as slots free up, so after a final error nothing new starts
    (deterministically: no queued concept slips through before the stop is noticed).
    """
    failures: dict[str, GenerationError] = {}
    pending = iter(todo)
    running: dict[Future[list[str]], str] = {}
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tgcnet-prompts") as pool:
        try:
            while True:
                while not requester.stop.is_set() and len(running) < concurrency:
                    concept = next(pending, None)
                    if concept is None:
                        break
                    running[pool.submit(requester.descriptions, concept)] = concept
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    _collect(requester, running.pop(fut), fut, store, failures)
        except BaseException:  # Ctrl-C: let in-flight requests end, keep what they stored
            requester.stop.set()
            raise
    return failures


def _collect(requester: Requester, concept: str, fut: Future[list[str]], store: Callable[[str, list[str]], None],
             failures: dict[str, GenerationError]) -> None:
    """Store a finished concept, or record its failure and stop the run."""
    try:
        descriptions = fut.result()
    except Stopped:
        return
    except GenerationError as exc:
        failures[concept] = exc
    except Exception as exc:  # a bug or an unforeseen client error: report it per concept
        failures[concept] = GenerationError(requester.redact(f"concept {concept!r}: {type(exc).__name__}: {exc}"))
    else:
        store(concept, descriptions)
        return
    requester.stop.set()


def _summary_error(failures: dict[str, GenerationError], report: GenerationReport,
                   todo: list[str]) -> GenerationError:
    """One error for the run; its type is MalformedReplyError only when every failure was one.

    An unreachable endpoint is one line: it is the endpoint's failure, not the concepts'.
    """
    missing = len(todo) - len(report.generated)
    unreachable = next((e for e in failures.values() if isinstance(e, EndpointUnreachableError)), None)
    if unreachable is not None:
        kept = f" (the {len(report.cache)} finished are kept in {report.path}; a rerun resumes)" if len(
            report.cache) else ""
        return EndpointUnreachableError(
            f"{unreachable}; rerunning will not help until the endpoint is reachable (start the server, or fix "
            f"the base URL or the network); {len(report.generated)} generated now, {missing} still missing{kept}")
    lines = [f"{len(failures)} concept(s) failed; {len(report.generated)} generated now and saved to "
             f"{report.path}, {missing} still missing (rerun the same command to resume):"]
    lines += [f"  {exc}" for exc in failures.values()]
    malformed = all(isinstance(exc, MalformedReplyError) for exc in failures.values())
    return (MalformedReplyError if malformed else GenerationError)("\n".join(lines))
