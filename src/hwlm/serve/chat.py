"""Chat templates: how a list of messages becomes one prompt for the model.

A run may carry its template with its tokenizer: ``chat_template.jinja`` beside ``tokenizer.json``
in the checkpoint (or run) folder, or a ``chat_template`` string in ``tokenizer_config.json``
(Hugging Face's two conventions). It is rendered in Jinja's sandbox with ``messages``,
``add_generation_prompt=True``, ``bos_token`` and ``eos_token``.

A run without one gets ``DEFAULT_TEMPLATE``, plain text a small model trained on prose can continue::

    System: You are terse.
    User: Hello
    Assistant: Hi.
    User: How are you?
    Assistant:

and chat requests on it also stop at ``DEFAULT_STOP`` ("\\nUser:"), so the model does not write the
user's next turn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hwlm.data.chat import DEFAULT_STOP, render_prompt  # the default template, shared with chat fine-tuning
from hwlm.errors import ConfigError

__all__ = ["ChatTemplate", "load_chat_template", "DEFAULT_STOP"]


class ChatTemplate:
    def __init__(self, source: str | None, eos_token: str = "", origin: str = "default") -> None:
        self.source, self.eos_token, self.origin = source, eos_token, origin
        self._jinja = None
        if source is not None:
            try:
                from jinja2.sandbox import ImmutableSandboxedEnvironment
            except ImportError:
                raise ConfigError(f"the chat template in {origin} needs jinja2: pip install jinja2") from None
            try:
                self._jinja = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source)
            except Exception as exc:  # jinja2's TemplateSyntaxError and friends
                raise ConfigError(f"chat template in {origin} does not parse: {exc}") from None

    @property
    def default_stop(self) -> tuple[str, ...]:
        return (DEFAULT_STOP,) if self.source is None else ()

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt for ``messages`` (dicts with role and content), ending where the assistant speaks."""
        if self._jinja is None:
            return render_prompt(messages)
        try:
            return self._jinja.render(messages=messages, add_generation_prompt=True, bos_token="",
                                      eos_token=self.eos_token)
        except Exception as exc:
            raise ConfigError(f"chat template in {self.origin} failed on these messages: {exc}") from None


def load_chat_template(folders: list[Path], eos_token: str = "") -> ChatTemplate:
    """The first template found in ``folders`` (checkpoint, then run), else the default."""
    for folder in folders:
        jinja = folder / "chat_template.jinja"
        if jinja.is_file():
            return ChatTemplate(jinja.read_text(encoding="utf-8"), eos_token, str(jinja))
        config = folder / "tokenizer_config.json"
        if config.is_file():
            try:
                source = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
            except (OSError, ValueError, AttributeError):
                raise ConfigError(f"{config} is not valid JSON: fix or remove it") from None
            if isinstance(source, str):
                return ChatTemplate(source, eos_token, str(config))
    return ChatTemplate(None, eos_token)


def message_text(content: Any) -> str:
    """A message's content as text: a string, or OpenAI's list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)
