"""Render a model's own chat template (Jinja2 text from the GGUF's ``tokenizer.chat_template``) safely.

Templates come from model files, i.e. from strangers: they are rendered only in Jinja2's
``ImmutableSandboxedEnvironment`` (no attribute access to internals, no mutation of passed objects), with the
few helpers Hugging Face's ``apply_chat_template`` offers and templates rely on: ``raise_exception(msg)``,
``strftime_now(fmt)``, a ``tojson`` filter that keeps non-ASCII text, and the loop-controls extension
(``{% break %}``).  Environment options match Hugging Face's (``trim_blocks``, ``lstrip_blocks``).

Only ``role`` and ``content`` reach the template: an assistant message's reasoning is never sent back to the
model (DeepSeek: "in multi-turn conversations the reasoning of earlier turns is not part of the context"), and
a ``</think>`` left inside an assistant's content is cut off with everything before it, as R1's own template does.
"""
from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from .errors import ChatTemplateError

# Used when a GGUF carries no template at all (llama.cpp falls back to ChatML too).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the model's chat template refused the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=8)
def _compile(source: str) -> Any:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except TemplateError as e:
        raise ChatTemplateError(f"the model's chat template is not valid Jinja ({e}): the GGUF's "
                                f"tokenizer.chat_template is damaged; convert the model again") from None


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """What the template sees: role and content only; assistant reasoning dropped."""
    out = []
    for m in messages:
        role, content = str(m["role"]), str(m.get("content") or "")
        if role == "assistant" and "</think>" in content:
            content = content.split("</think>")[-1].lstrip()
        out.append({"role": role, "content": content})
    return out


class ChatTemplate:
    """A compiled chat template.  ``source=None`` uses ChatML."""

    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source if source else CHATML_TEMPLATE
        self.is_fallback = not source
        self.bos_token, self.eos_token = bos_token, eos_token
        self._template = _compile(self.source)

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """The conversation as text.  Raises ChatTemplateError when the template fails or refuses it."""
        from jinja2 import TemplateError
        from jinja2.sandbox import SecurityError

        try:
            return self._template.render(messages=template_messages(messages), bos_token=self.bos_token,
                                         eos_token=self.eos_token, add_generation_prompt=add_generation_prompt)
        except ChatTemplateError:
            raise
        except SecurityError as e:
            raise ChatTemplateError(f"the model's chat template tried something unsafe and was stopped ({e}): "
                                    f"use a model file from a source you trust") from None
        except (TemplateError, TypeError, KeyError, IndexError, ValueError, ArithmeticError, RecursionError,
                MemoryError) as e:   # OverflowError: the sandbox stopping range(10**9); the model file's fault
            reason = " ".join(str(e).split()).rstrip(".") or type(e).__name__
            raise ChatTemplateError(f"the model's chat template failed on this conversation ({reason}): use "
                                    f"another model file, or convert this one again") from None
