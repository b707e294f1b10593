"""One chat-completion call to any OpenAI-compatible server, with one-line errors.

The ``openai`` package (extra ``judge``) does the HTTP: connection pooling, timeouts, and retries with
exponential backoff on 408, 409, 429 and 5xx answers, honouring ``Retry-After``. This module only maps
what can still go wrong after the retries into :class:`JudgeEndpointError`, one line naming the endpoint
and the model, and checks before a run that the server knows the model where it lists its models.
"""

from __future__ import annotations

import os
from typing import Any

from popalign.errors import PopalignError
from popalign.pop.judge_cache import Answer


class JudgeEndpointError(PopalignError):
    """The endpoint could not answer (unreachable, unknown model, refused, or failing after retries)."""


def _import_openai():
    try:
        import openai
    except ImportError:
        raise PopalignError(
            "the LLM judge needs the openai client: pip install 'popalign[judge]' (or pip install openai)"
        ) from None
    return openai


class JudgeClient:
    """Chat completions from ``model`` at ``endpoint`` (the base URL that ends before ``/chat``)."""

    def __init__(
        self,
        endpoint: str,
        model: str,
        api_key_env: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 5,
    ) -> None:
        openai = _import_openai()
        self.endpoint, self.model = endpoint, model
        key = "none"  # local servers ignore the key, but the client insists on one
        if api_key_env:
            key = os.environ.get(api_key_env, "")
            if not key:
                raise PopalignError(f"--api-key-env {api_key_env}: that environment variable is not set")
        self._openai = openai
        self._client = openai.OpenAI(base_url=endpoint, api_key=key, timeout=timeout, max_retries=max_retries)

    def _error(self, exc: Exception) -> JudgeEndpointError:
        openai = self._openai
        where = f"{self.endpoint} (model {self.model!r})"
        if isinstance(exc, openai.APITimeoutError):
            return JudgeEndpointError(f"{where}: no answer within the timeout, after retries")
        if isinstance(exc, openai.APIConnectionError):
            return JudgeEndpointError(f"{where}: cannot reach the endpoint (is the server running?)")
        if isinstance(exc, openai.NotFoundError):
            return JudgeEndpointError(f"{where}: not found (404): the server lacks this model or path")
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return JudgeEndpointError(f"{where}: refused ({exc.status_code}): check --api-key-env")
        if isinstance(exc, openai.APIStatusError):
            detail = " ".join(str(exc.message).split())[:200]
            return JudgeEndpointError(
                f"{where}: HTTP {exc.status_code} after retries: {detail} (a wrong --model gives this "
                "on servers that load models on demand)"
            )
        return JudgeEndpointError(f"{where}: {type(exc).__name__}: {exc}")

    def check_model(self) -> None:
        """Fail early when the server lists its models and ``model`` is not among them.

        Servers whose listing fails (``transformers serve`` answers 500 without a Hub cache) are not
        judged by it: the first question then tells.
        """
        openai = self._openai
        try:
            listed = [m.id for m in self._client.models.list()]
        except openai.APIConnectionError as exc:
            raise self._error(exc) from None
        except openai.APIError:
            return
        if listed and self.model not in listed:
            shown = ", ".join(listed[:5]) + (", ..." if len(listed) > 5 else "")
            raise JudgeEndpointError(
                f"{self.endpoint}: the server does not serve model {self.model!r} (it serves: {shown})"
            )

    def ask(self, messages: list[dict[str, str]], sampling: dict[str, Any]) -> Answer:
        """One chat completion; ``sampling`` holds ``temperature``, ``max_tokens`` and ``seed``."""
        try:
            out = self._client.chat.completions.create(model=self.model, messages=messages, **sampling)
        except self._openai.APIError as exc:
            raise self._error(exc) from None
        text = out.choices[0].message.content if out.choices else None
        usage = out.usage
        return Answer(
            text=text or "",
            prompt_tokens=None if usage is None else usage.prompt_tokens,
            completion_tokens=None if usage is None else usage.completion_tokens,
        )
