"""A chat client for OpenAI-compatible ``/chat/completions`` endpoints on the ``openai`` package.

``openai`` is the optional extra ``llm`` (``pip install "tl_latentlens[llm]"``); without it
:class:`ChatClient` raises :class:`MissingExtraError` naming that command. The endpoint and key
follow the ``openai`` conventions: an explicit ``base_url`` / ``api_key``, else the
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` environment variables, else OpenAI's own endpoint (a
local server that wants no key gets a placeholder key).

Retries are ours, not the ``openai`` client's (it is built with ``max_retries=0``): transport
failures, timeouts, HTTP 408/409/425/429/5xx *and unreadable response bodies* (which ``openai``
does not retry) are retried with exponential backoff and seeded jitter; a ``Retry-After`` (or
``retry-after-ms``) header is honoured, capped at :attr:`RetryPolicy.retry_after_max_s`; the
wait goes through an injectable ``sleep``, so tests do not wait. Other HTTP errors (400, 401,
403, 404 ...) fail at once: asking again would not help.

Example:
    >>> client = ChatClient("http://127.0.0.1:8000/v1", model="smollm2")
    >>> client.chat([{"role": "user", "content": "Say yes."}], max_tokens=5)
    'Yes.'
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ChatClient",
    "ChatError",
    "MissingExtraError",
    "RetryPolicy",
    "parse_retry_after",
    "require_openai",
]

logger = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

#: What to run when the ``llm`` extra is missing.
INSTALL_LLM = 'pip install "tl_latentlens[llm]"'

# Sent when no key is configured: OpenAI-compatible local servers ignore it, and openai
# refuses to build a client without one.
_NO_KEY = "not-needed"


class MissingExtraError(ImportError):
    """An optional dependency is not installed (the message names the pip command)."""


class ChatError(RuntimeError):
    """The endpoint could not give an answer.

    Attributes:
        status: HTTP status of the last attempt (``None`` for transport errors).
        retryable: Whether the failure was of a kind that is retried.
        attempts: Attempts made.
        retry_after: Seconds the server asked to wait (``Retry-After``), if it did.
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        retryable: bool = False,
        attempts: int = 1,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.retryable, self.attempts = status, retryable, attempts
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    Attributes:
        max_attempts: Attempts per request (first try included).
        backoff_base_s: Delay before the second attempt; doubles each time.
        backoff_max_s: Cap of the exponential delay.
        jitter: Fraction of the delay drawn at random: the wait is
            ``delay * (1 - jitter * U[0, 1))`` (0: no jitter).
        retry_after_max_s: Longest ``Retry-After`` obeyed (longer ones are capped).
    """

    max_attempts: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    jitter: float = 0.5
    retry_after_max_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ValueError("backoff delays must be >= 0")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Wait before attempt ``attempt + 1`` (``attempt`` counts from 0)."""
        base = min(self.backoff_max_s, self.backoff_base_s * 2.0**attempt)
        return base * (1.0 - self.jitter * rng.random())


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value (delta seconds or HTTP date).

    Example:
        >>> parse_retry_after("3"), parse_retry_after(None), parse_retry_after("soon")
        (3.0, None, None)
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def require_openai() -> Any:
    """The ``openai`` module.

    Raises:
        MissingExtraError: It is not installed (the message names the pip command).
    """
    try:
        import openai
    except ImportError as e:
        raise MissingExtraError(
            f"the LLM judge needs the openai client, which is not installed: {INSTALL_LLM}"
        ) from e
    return openai


@dataclass
class ChatClient:
    """Send chat requests to ``{base_url}/chat/completions`` and return the message text.

    Attributes:
        base_url: Endpoint root, e.g. ``http://127.0.0.1:8000/v1`` (``None``:
            ``OPENAI_BASE_URL``, else OpenAI's endpoint).
        model: Model name sent in each request.
        api_key: Bearer token (``None``: ``OPENAI_API_KEY``, else none).
        timeout_s: Timeout per attempt.
        retry: The :class:`RetryPolicy`.
        sleep: Waiting function (tests pass a recorder).
        seed: Seed of the jitter's random generator.

    Raises:
        MissingExtraError: ``openai`` is not installed.
        ValueError: A base URL that is not http(s), or a non-positive timeout.
    """

    base_url: str | None
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        self._rng = random.Random(self.seed)
        self._openai = require_openai()
        self._client = self._openai.OpenAI(
            base_url=self.base_url,  # None: openai reads OPENAI_BASE_URL, else its default
            api_key=self.api_key or os.environ.get("OPENAI_API_KEY") or _NO_KEY,
            timeout=self.timeout_s,
            max_retries=0,  # retried here (module docstring)
        )

    @property
    def url(self) -> str:
        """The full ``/chat/completions`` URL."""
        return str(self._client.base_url).rstrip("/") + "/chat/completions"

    def chat(self, messages: list[dict[str, Any]], **params: Any) -> str:
        """Send one chat request (``params``: ``max_tokens``, ``temperature`` ...).

        Returns:
            The first choice's message content.

        Raises:
            ChatError: A non-retryable HTTP error, or every attempt failed.
        """
        last: ChatError | None = None
        for attempt in range(self.retry.max_attempts):
            try:
                return self._once(messages, params)
            except ChatError as e:
                e.attempts = attempt + 1
                if not e.retryable:
                    raise
                last = e
                if attempt + 1 >= self.retry.max_attempts:
                    break
                if e.retry_after is not None:
                    wait = min(e.retry_after, self.retry.retry_after_max_s)
                else:
                    wait = self.retry.delay(attempt, self._rng)
                logger.info(
                    "chat attempt %d/%d failed (%s); retrying in %.2fs",
                    attempt + 1,
                    self.retry.max_attempts,
                    e,
                    wait,
                )
                self.sleep(wait)
        raise ChatError(
            f"gave up after {self.retry.max_attempts} attempts: {last}",
            status=last.status if last else None,
            retryable=True,
            attempts=self.retry.max_attempts,
        )

    def _once(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
        openai = self._openai
        try:
            completion = self._client.chat.completions.create(
                model=self.model, messages=messages, **params
            )
        except openai.APIStatusError as e:
            headers = e.response.headers
            raise ChatError(
                f"HTTP {e.status_code} from {self.url}: {str(e)[:200]}",
                status=e.status_code,
                retryable=e.status_code in _RETRY_STATUS,
                retry_after=_retry_after(headers),
            ) from e
        except openai.APIConnectionError as e:  # refused connections, timeouts
            raise ChatError(f"cannot reach {self.url}: {e}", retryable=True) from e
        except (openai.APIResponseValidationError, ValueError) as e:  # body not JSON
            raise ChatError(f"unreadable response from {self.url}: {e}", 200, True) from e
        try:
            content = completion.choices[0].message.content
        except (AttributeError, IndexError, TypeError) as e:
            raise ChatError(
                f"unreadable response from {self.url}: {str(completion)[:200]}", 200, True
            ) from e
        if not isinstance(content, str):
            raise ChatError(f"response content is not text: {content!r:.200}", 200, True)
        return content


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` (openai's servers) or ``Retry-After``."""
    ms = headers.get("retry-after-ms") if headers is not None else None
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after") if headers is not None else None)
