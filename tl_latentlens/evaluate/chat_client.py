"""A minimal client for OpenAI-compatible ``/chat/completions`` endpoints (stdlib ``urllib``).

Transport failures, timeouts, HTTP 408/409/425/429/5xx and unreadable response bodies are
retried with exponential backoff and jitter; a ``Retry-After`` header (seconds or an HTTP
date) is honoured, capped at :attr:`RetryPolicy.retry_after_max_s`. Other HTTP errors (400,
401, 403, 404 ...) fail at once: asking again would not help.

Example:
    >>> client = ChatClient("http://127.0.0.1:8000/v1", model="smollm2")
    >>> client.chat([{"role": "user", "content": "Say yes."}], max_tokens=5)
    'Yes.'
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ChatClient", "ChatError", "RetryPolicy", "parse_retry_after"]

logger = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


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


@dataclass
class ChatClient:
    """POST chat requests to ``{base_url}/chat/completions`` and return the message text.

    Attributes:
        base_url: Endpoint root, e.g. ``http://127.0.0.1:8000/v1``.
        model: Model name sent in each request.
        api_key: Bearer token (``None``: no ``Authorization`` header).
        timeout_s: Socket timeout per attempt.
        retry: The :class:`RetryPolicy`.
        sleep: Waiting function (tests pass a recorder).
        seed: Seed of the jitter's random generator.
    """

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        self._rng = random.Random(self.seed)

    @property
    def url(self) -> str:
        """The full ``/chat/completions`` URL."""
        return self.base_url.rstrip("/") + "/chat/completions"

    def chat(self, messages: list[dict[str, Any]], **params: Any) -> str:
        """Send one chat request (``params``: ``max_tokens``, ``temperature`` ...).

        Returns:
            The first choice's message content.

        Raises:
            ChatError: A non-retryable HTTP error, or every attempt failed.
        """
        payload = json.dumps({"model": self.model, "messages": messages, **params}).encode()
        last: ChatError | None = None
        for attempt in range(self.retry.max_attempts):
            try:
                return self._once(payload)
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

    def _once(self, payload: bytes) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            detail = _read_quietly(e)
            raise ChatError(
                f"HTTP {e.code} from {self.url}: {detail[:200]}",
                status=e.code,
                retryable=e.code in _RETRY_STATUS,
                retry_after=parse_retry_after(e.headers.get("Retry-After") if e.headers else None),
            ) from e
        except OSError as e:  # URLError, timeouts, refused connections
            raise ChatError(f"cannot reach {self.url}: {e}", retryable=True) from e
        try:
            data = json.loads(body)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ChatError(
                f"unreadable response from {self.url}: {body[:200]!r}", 200, True
            ) from e
        if not isinstance(content, str):
            raise ChatError(f"response content is not text: {content!r:.200}", 200, True)
        return content


def _read_quietly(e: urllib.error.HTTPError) -> str:
    try:
        return e.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - best effort for an error message
        return ""
