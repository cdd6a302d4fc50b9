"""What can stop description generation; each names the concept or the endpoint at fault.

A home of their own because the request side (:mod:`.chat`), the reply parser
(:mod:`.replies`) and the run (:mod:`.generate`) all raise them, and a CLI tells them apart
by type: an unreachable endpoint is the user's to fix, a bad reply may pass on a rerun.
"""
from __future__ import annotations

__all__ = ["GenerationError", "MalformedReplyError", "EndpointUnreachableError"]


class GenerationError(RuntimeError):
    """Generation could not finish; what was finished is already in the cache file."""


class MalformedReplyError(GenerationError):
    """The endpoint answered, but not with the JSON shape the template asks for."""


class EndpointUnreachableError(GenerationError):
    """No connection could be made to the endpoint; rerunning helps only once it is reachable."""
