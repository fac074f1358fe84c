"""Environment messages as tokens, appended to an episode without re-tokenising what came before.

Re-rendering a whole conversation with the chat template after every turn and tokenising it again
changes tokens the model sampled: a template may strip or rewrite earlier assistant turns (e.g.
drop their reasoning), and BPE may merge a sampled token with the text after it. The log-probs and
masks of the sampled tokens then no longer match what is trained (TRL issues #5224, #5144). Here an
episode's token ids are only ever appended to:

- the sampled ids of each assistant turn, exactly as the engine returned them;
- for the environment's messages, the ids of the text the chat template adds for them after an
  assistant turn: the template renders a probe conversation [user, assistant MARK] with and without
  the new messages (and the generation prompt); the text after MARK in the longer rendering is what
  the template adds. When the model's turn ended with an end-of-turn token that the template writes
  itself (``<|im_end|>``), the model's own token stands for it and the template's text of it is
  skipped. That text is tokenised alone (``add_special_tokens=False``).
- without a chat template (a plain-text prompt), the text the environment renders for the messages
  (``MultiTurnEnv.render_plain``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from grpopp.envs.base import Message
from grpopp.envs.tools import TOOLS_SYSTEM_PROMPT
from grpopp.rollout.base import Prompt, encode_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_MARK = "\u2063grpopp-turn\u2063"
"""The probe assistant turn's content: text no template rewrites and no conversation holds."""


class TemplateError(ValueError):
    """The chat template cannot be extended message by message."""


def template_text(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    generation_prompt: bool,
    tools: Sequence[dict[str, Any]] | None = None,
) -> str:
    schemas: list[dict[Any, Any] | Callable[..., Any]] | None = None if tools is None else list(tools)
    text = tokenizer.apply_chat_template(
        [m.template_dict() for m in messages], add_generation_prompt=generation_prompt, tokenize=False, tools=schemas
    )
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not str")
    return text


def appended_text(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], after_token: int | None) -> str:
    """The text the chat template adds for ``messages`` (and the next generation prompt) after an
    assistant turn; ``after_token``: the turn's last sampled token, when it ended the turn."""
    probe = [Message(role="user", content="?"), Message(role="assistant", content=_MARK)]
    before = template_text(tokenizer, probe, generation_prompt=False)
    after = template_text(tokenizer, [*probe, *messages], generation_prompt=True)
    end = before.find(_MARK)
    if end < 0 or after[: end + len(_MARK)] != before[: end + len(_MARK)]:
        raise TemplateError(
            "the chat template renders a conversation differently once messages follow an assistant turn, "
            "so an episode cannot be extended token by token; use a template whose earlier turns do not change"
        )
    added = after[end + len(_MARK) :]
    if after_token is not None:
        closing = tokenizer.decode([after_token], skip_special_tokens=False)
        if (
            isinstance(closing, str) and closing and added.startswith(closing)
        ):  # the model's own end-of-turn token stands for it
            added = added[len(closing) :]
    return added


def message_ids(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    plain_text: str | None,
    after_token: int | None,
) -> list[int]:
    """Token ids appended to an episode for the environment's ``messages``: ``plain_text`` tokenised
    when the prompt is plain text, else what the chat template adds (module docstring)."""
    text = plain_text if plain_text is not None else appended_text(tokenizer, messages, after_token)
    return list(tokenizer.encode(text, add_special_tokens=False))


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, tools: list[dict[str, Any]]) -> list[int]:
    """Token ids of an episode's prompt. With ``tools`` (JSON schemas): through the chat template's
    ``tools=`` when the template renders them, else in a system message (``TOOLS_SYSTEM_PROMPT``,
    added to the prompt's own system message if it has one); a plain-text prompt gets that text first."""
    if not tools:
        return encode_prompt(tokenizer, prompt)
    described = TOOLS_SYSTEM_PROMPT.format(tools="\n".join(json.dumps(t) for t in tools))
    if isinstance(prompt, str):
        return encode_prompt(tokenizer, f"{described}\n\n{prompt}")
    encode_prompt(tokenizer, prompt)  # the checks (a template exists, the prompt is not empty)
    with_tools = template_text(tokenizer, prompt, True, tools)
    if with_tools != template_text(tokenizer, prompt, True):
        return list(tokenizer.encode(with_tools, add_special_tokens=False))
    if prompt and prompt[0].role == "system":
        system = Message(role="system", content=f"{prompt[0].content}\n\n{described}")
        return encode_prompt(tokenizer, [system, *prompt[1:]])
    return encode_prompt(tokenizer, [Message(role="system", content=described), *prompt])
