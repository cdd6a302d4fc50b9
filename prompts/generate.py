"""Generate concept descriptions through an OpenAI-compatible chat endpoint into the cache.

Why it is built this way:

* The API key is read from one environment variable and handed to the `openai` client
  only. Nothing here formats it into a message; error texts that quote the endpoint's
  reply pass through `_Redactor` anyway, in case a proxy echoes the key back.
* The client is created with ``max_retries=0``: retries happen here, with exponential
  backoff and jitter, so that a 429, a 5xx, a timeout or a dropped connection costs one
  concept a delay and not the whole run, and so tests can make the delays tiny.
* An endpoint that cannot be connected to at all (connection refused, unknown host,
  connect timeout) is not retried: every concept would fail the same way, and backoff
  would only spend a minute before saying so. The run stops at once with
  `EndpointUnreachableError`, one line naming the host and port.
* Every finished concept is written to the cache file at once (atomically), so a run that
  is killed or fails loses nothing, and the next run skips what is already there
  (same template hash) and asks only for the rest.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

from .cache import KnowledgeCache, Provenance, load_cache, save_cache
from .concepts import concept_kind
from .prompt_templates import PromptTemplates, load_templates, render_messages

__all__ = ["GenerationError", "MalformedReplyError", "EndpointUnreachableError", "GenerationReport", "generate_cache",
           "backoff_delay", "endpoint_host", "parse_descriptions"]

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})


class GenerationError(RuntimeError):
    """Generation could not finish; what was finished is already in the cache file."""


class MalformedReplyError(GenerationError):
    """The endpoint answered, but not with the JSON shape the template asks for."""


class EndpointUnreachableError(GenerationError):
    """No connection could be made to the endpoint; rerunning helps only once it is reachable."""


@dataclass
class GenerationReport:
    """What a run did: `generated` were requested now, `skipped` were already cached."""

    cache: KnowledgeCache
    path: Path
    generated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class _Stopped(Exception):
    """A worker noticed that the run is being stopped and gave up its concept."""


class _Redactor:
    """Removes the key from any text that might reach a message or a log."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def __call__(self, text: str) -> str:
        return text.replace(self._secret, "[redacted]") if self._secret else text


# --------------------------------------------------------------------------- small helpers

def endpoint_host(url: str) -> str:
    """scheme://host[:port] of an endpoint: no userinfo, path, query or fragment, which can hold secrets."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}" if parts.scheme else host


def endpoint_address(url: str) -> str:
    """'host H, port P' of an endpoint, the port filled in from the scheme when the URL omits it."""
    parts = urlsplit(str(url))
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or {"http": 80, "https": 443}.get(parts.scheme)
    return f"host {parts.hostname or '?'}, port {port or '?'}"


def backoff_delay(attempt: int, base: float, cap: float, jitter: float = 0.5,
                  retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """base * 2**attempt, capped, stretched by up to `jitter` so parallel workers do not retry in lockstep.

    A server's Retry-After wins when larger, but never beyond `cap`.
    """
    delay = min(cap, base * (2 ** attempt))
    delay *= 1.0 + jitter * (rng or random).random()
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(cap, delay)


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            return float(headers.get(name)) * scale
        except (TypeError, ValueError):
            continue
    return None


def _is_retryable(exc: Exception) -> bool:
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status in RETRYABLE_STATUS or status >= 500)


_CONNECT_ERRORS = ("ConnectError", "ConnectTimeout")  # httpx's, whichever httpx the openai client uses


def _connect_failure(exc: Exception) -> BaseException | None:
    """The transport error behind `exc` when no connection was made at all, else None.

    Matched by class name along the cause chain: openai wraps httpx's (or httpx2's)
    ConnectError / ConnectTimeout, and which of those libraries it uses varies by version.
    A connection that was made and then dropped is not one of these: it stays retryable.
    """
    cause = exc.__cause__
    for _ in range(5):
        if cause is None:
            return None
        if any(cls.__name__ in _CONNECT_ERRORS for cls in type(cause).__mro__):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _describe(exc: Exception, redact: _Redactor, timeout: float) -> str:
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, openai.APIConnectionError):
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "unknown cause"
        return f"connection error ({cause})"
    status = getattr(exc, "status_code", "?")
    body = redact(str(getattr(exc, "message", "") or exc))
    return f"HTTP {status}: {body[:200]}"


# --------------------------------------------------------------------------- reply parsing

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_descriptions(content: str, concept: str, k: int, finish_reason: str | None = None) -> list[str]:
    """Descriptions from a reply: `{"descriptions": [...]}` (a bare list is accepted too).

    Code fences are stripped because chat models add them even when told not to; anything
    else that is not that shape is an error naming the concept.
    """
    fenced = _FENCE.match(content)
    text = fenced.group(1) if fenced else content.strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        cut = " (finish_reason=length: the reply was cut off)" if finish_reason == "length" else ""
        raise MalformedReplyError(f"concept {concept!r}: the reply is not JSON ({exc.msg} at char {exc.pos}){cut}; "
                                  f"it starts {text[:80]!r}") from None
    items = data.get("descriptions") if isinstance(data, dict) else data
    if not isinstance(items, list) or not all(isinstance(d, str) for d in items):
        raise MalformedReplyError(f"concept {concept!r}: expected {{\"descriptions\": [string, ...]}}, "
                                  f"got {text[:80]!r}")
    seen: set[str] = set()
    out: list[str] = []
    for d in (" ".join(d.split()) for d in items):
        if d and d.lower() not in seen:
            seen.add(d.lower())
            out.append(d)
    if not out:
        raise MalformedReplyError(f"concept {concept!r}: the reply holds no non-empty description")
    return out[:k]


def _reply_descriptions(response: Any, concept: str, k: int) -> list[str]:
    """Dig the message text out of a chat completion whose shape the endpoint may have botched."""
    try:
        choice = response.choices[0]
        content = choice.message.content
        finish = getattr(choice, "finish_reason", None)
    except (AttributeError, IndexError, TypeError, KeyError):
        raise MalformedReplyError(f"concept {concept!r}: the response has no choices[0].message.content") from None
    if not isinstance(content, str) or not content.strip():
        raise MalformedReplyError(f"concept {concept!r}: empty reply (finish_reason={finish!r})")
    return parse_descriptions(content, concept, k, finish)


# --------------------------------------------------------------------------- one concept

@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to obtain one concept's descriptions."""

    client: Any
    model: str
    k: int
    templates: PromptTemplates
    max_retries: int
    timeout: float
    backoff_base: float
    backoff_max: float
    request_kwargs: Mapping[str, Any]
    redact: _Redactor
    stop: threading.Event
    endpoint: str

    def run(self, concept: str) -> list[str]:
        """Request with retries; raises GenerationError naming the concept, or _Stopped."""
        import openai

        messages = render_messages(self.templates, concept, self.k)
        for attempt in range(self.max_retries + 1):
            if self.stop.is_set():
                raise _Stopped
            try:
                response = self.client.chat.completions.create(model=self.model, messages=messages,
                                                               **self.request_kwargs)
            except openai.APIResponseValidationError:
                raise MalformedReplyError(f"concept {concept!r}: the endpoint's response does not parse "
                                          "as a chat completion") from None
            except (openai.APIStatusError, openai.APIConnectionError) as exc:
                self._after_failure(concept, exc, attempt)
                continue
            except ValueError as exc:  # the HTTP body itself is not JSON
                raise MalformedReplyError(f"concept {concept!r}: the endpoint's response is not JSON "
                                          f"({type(exc).__name__})") from None
            return _reply_descriptions(response, concept, self.k)
        raise AssertionError("unreachable")  # pragma: no cover

    def _after_failure(self, concept: str, exc: Exception, attempt: int) -> None:
        """Sleep before the next attempt, or raise when the error is final or retries are spent."""
        unreachable = _connect_failure(exc)
        if unreachable is not None:
            reason = self.redact(str(unreachable)) or type(unreachable).__name__
            raise EndpointUnreachableError(f"cannot reach the endpoint {self.endpoint} "
                                           f"({endpoint_address(self.endpoint)}): {reason}") from None
        problem = _describe(exc, self.redact, self.timeout)
        if not _is_retryable(exc):
            raise GenerationError(f"concept {concept!r}: request refused, {problem}") from None
        if attempt >= self.max_retries:
            raise GenerationError(f"concept {concept!r}: gave up after {attempt + 1} attempts, "
                                  f"last error: {problem}") from None
        delay = backoff_delay(attempt, self.backoff_base, self.backoff_max, retry_after=_retry_after(exc))
        log.warning("concept %r: %s; retry %d/%d in %.2f s", concept, problem, attempt + 1, self.max_retries, delay)
        if self.stop.wait(delay):
            raise _Stopped


# --------------------------------------------------------------------------- the run

def _read_api_key(env_var: str) -> str:
    value = os.environ.get(env_var, "")
    if not value.strip():
        raise GenerationError(f"environment variable {env_var} is not set or empty: put the API key there "
                              "(any placeholder for an endpoint that needs none)")
    return value.strip()


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

    from openai import OpenAI

    key = _read_api_key(api_key_env)
    redact = _Redactor(key)
    client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=timeout)
    del key
    try:
        endpoint = endpoint_host(str(client.base_url))
        job = _Job(client, model, k, templates, max_retries, timeout, backoff_base, backoff_max,
                   dict(request_kwargs or {}), redact, threading.Event(), endpoint)
        log.info("generating %d concept(s) with %s at %s (%d cached)", len(todo), model, endpoint, len(report.skipped))
        failures = _run_pool(job, todo, concurrency, lambda c, d: _store(report, c, d, Provenance(
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


def _run_pool(job: _Job, todo: list[str], concurrency: int,
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
                while not job.stop.is_set() and len(running) < concurrency:
                    concept = next(pending, None)
                    if concept is None:
                        break
                    running[pool.submit(job.run, concept)] = concept
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    _collect(job, running.pop(fut), fut, store, failures)
        except BaseException:  # Ctrl-C: let in-flight requests end, keep what they stored
            job.stop.set()
            raise
    return failures


def _collect(job: _Job, concept: str, fut: Future[list[str]], store: Callable[[str, list[str]], None],
             failures: dict[str, GenerationError]) -> None:
    """Store a finished concept, or record its failure and stop the run."""
    try:
        descriptions = fut.result()
    except _Stopped:
        return
    except GenerationError as exc:
        failures[concept] = exc
    except Exception as exc:  # a bug or an unforeseen client error: report it per concept
        failures[concept] = GenerationError(job.redact(f"concept {concept!r}: {type(exc).__name__}: {exc}"))
    else:
        store(concept, descriptions)
        return
    job.stop.set()


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
