"""One concept's descriptions from an OpenAI-compatible chat endpoint: the client, retries, backoff.

Why it is built this way:

* The API key is read from one environment variable and handed to the `openai` client
  only. Nothing here formats it into a message; error texts that quote the endpoint's
  reply pass through a :class:`Redactor` anyway, in case a proxy echoes the key back.
* The client is created with ``max_retries=0``: retries happen here, with exponential
  backoff and jitter, so that a 429, a 5xx, a timeout or a dropped connection costs one
  concept a delay and not the whole run, and so tests can make the delays tiny.
* An endpoint that cannot be connected to at all (connection refused, unknown host,
  connect timeout) is not retried: every concept would fail the same way, and backoff
  would only spend a minute before saying so. The request stops at once with
  `EndpointUnreachableError`, one line naming the host and port.
"""
from __future__ import annotations

import logging
import os
import random
import threading
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

from .generation_errors import EndpointUnreachableError, GenerationError, MalformedReplyError
from .prompt_templates import PromptTemplates, render_messages
from .replies import reply_descriptions

__all__ = ["RETRYABLE_STATUS", "Redactor", "Requester", "Stopped", "backoff_delay", "endpoint_address",
           "endpoint_host", "open_client"]

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
_CONNECT_ERRORS = ("ConnectError", "ConnectTimeout")  # httpx's, whichever httpx the openai client uses


class Stopped(Exception):
    """A worker noticed that the run is being stopped and gave up its concept."""


class Redactor:
    """Removes the key from any text that might reach a message or a log."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def __call__(self, text: str) -> str:
        return text.replace(self._secret, "[redacted]") if self._secret else text


def _read_api_key(env_var: str) -> str:
    value = os.environ.get(env_var, "")
    if not value.strip():
        raise GenerationError(f"environment variable {env_var} is not set or empty: put the API key there "
                              "(any placeholder for an endpoint that needs none)")
    return value.strip()


def open_client(base_url: str | None, api_key_env: str, timeout: float) -> tuple[Any, Redactor]:
    """An OpenAI client that never retries on its own (:class:`Requester` does), and a redactor of its key."""
    from openai import OpenAI

    key = _read_api_key(api_key_env)
    return OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=timeout), Redactor(key)


# --------------------------------------------------------------------------- naming the endpoint

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


# --------------------------------------------------------------------------- judging a failure

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


def _problem(exc: Exception, redact: Redactor, timeout: float) -> str:
    """A failed request in a few words, for a retry warning or the final error."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, openai.APIConnectionError):
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "unknown cause"
        return f"connection error ({cause})"
    status = getattr(exc, "status_code", "?")
    body = redact(str(getattr(exc, "message", "") or exc))
    return f"HTTP {status}: {body[:200]}"


# --------------------------------------------------------------------------- one concept

@dataclass(frozen=True)
class Requester:
    """Everything a worker needs to obtain one concept's descriptions; one per run, shared by the workers."""

    client: Any
    model: str
    k: int
    templates: PromptTemplates
    max_retries: int
    timeout: float
    backoff_base: float
    backoff_max: float
    request_kwargs: Mapping[str, Any]
    redact: Redactor
    stop: threading.Event
    endpoint: str

    def descriptions(self, concept: str) -> list[str]:
        """Request with retries; raises GenerationError naming the concept, or Stopped."""
        import openai

        messages = render_messages(self.templates, concept, self.k)
        for attempt in range(self.max_retries + 1):
            if self.stop.is_set():
                raise Stopped
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
            return reply_descriptions(response, concept, self.k)
        raise AssertionError("unreachable")  # pragma: no cover

    def _after_failure(self, concept: str, exc: Exception, attempt: int) -> None:
        """Sleep before the next attempt, or raise when the error is final or retries are spent."""
        unreachable = _connect_failure(exc)
        if unreachable is not None:
            reason = self.redact(str(unreachable)) or type(unreachable).__name__
            raise EndpointUnreachableError(f"cannot reach the endpoint {self.endpoint} "
                                           f"({endpoint_address(self.endpoint)}): {reason}") from None
        problem = _problem(exc, self.redact, self.timeout)
        if not _is_retryable(exc):
            raise GenerationError(f"concept {concept!r}: request refused, {problem}") from None
        if attempt >= self.max_retries:
            raise GenerationError(f"concept {concept!r}: gave up after {attempt + 1} attempts, "
                                  f"last error: {problem}") from None
        delay = backoff_delay(attempt, self.backoff_base, self.backoff_max, retry_after=_retry_after(exc))
        log.warning("concept %r: %s; retry %d/%d in %.2f s", concept, problem, attempt + 1, self.max_retries, delay)
        if self.stop.wait(delay):
            raise Stopped
