"""The chat template shared by chat fine-tuning and the server, torch-free.

A conversation is a list of ``{"role": "system" | "user" | "assistant", "content": str}``. The
default template is plain text that a small model trained on prose can continue, one turn per line::

    System: You are terse.
    User: Hello
    Assistant: Hi.
    User: How are you?
    Assistant:

:func:`render_prompt` is what a server sends the model (the text so far, ending where the assistant
speaks; generation stops at :data:`DEFAULT_STOP` or the end-of-text token). :func:`training_segments`
is the same text for training, cut into pieces with a flag saying which ones the assistant wrote:
each assistant turn is `` <content>`` followed by ``\\n`` (or, for the last turn, nothing: the
end-of-text token follows), so the model learns to answer and to stop, and the loss is computed
on exactly those pieces (``hwlm train --task chat``). ``hwlm.serve.chat``'s default template renders
the same prompt (tested).
"""

from __future__ import annotations

from typing import Any

from hwlm.errors import DataError

__all__ = ["ROLES", "DEFAULT_STOP", "render_prompt", "training_segments", "check_messages"]

DEFAULT_STOP = "\nUser:"
ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    """The messages of one conversation, checked: roles known, contents strings, an assistant turn present."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {i} needs a role ({', '.join(ROLES)}) and a string content")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant turn to learn from")
    return messages


def render_prompt(messages: list[dict[str, str]]) -> str:
    """The prompt for ``messages``, ending with ``"\\nAssistant:"`` where the model speaks.

    >>> render_prompt([{"role": "user", "content": "Hello"}])
    'User: Hello\\nAssistant:'
    """
    return "\n".join(f"{ROLES[m['role']]}: {m['content']}" for m in messages) + "\nAssistant:"


def training_segments(messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """``(text, written_by_assistant)`` pieces whose concatenation is the whole conversation.

    >>> training_segments([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}])
    [('User: Hi\\nAssistant:', False), (' Hello.', True)]
    """
    out: list[tuple[str, bool]] = []
    pending = ""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    for i, m in enumerate(messages[:last + 1]):
        if m["role"] == "assistant":
            out.append((pending + "Assistant:", False))
            out.append((" " + m["content"] + ("\n" if i < last else ""), True))
            pending = ""
        else:
            pending += f"{ROLES[m['role']]}: {m['content']}\n"
    return [(t, a) for t, a in out if t]
