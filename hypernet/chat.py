"""The input template of a chat model: its chat template rendered once, at `tagi init`.

`CheckpointConfig.input_template` is the one place where an input is written for the adapted
model: `tagi run`, the server (its OpenAI endpoint too), training and the PEFT export's
`tagi.json` all use it. For a base with a chat template the template is derived here, once,
by rendering a one-user-message conversation with the generation prompt around a placeholder,
so an exported adapter is prompted exactly as it was generated and trained, in any runtime,
without that runtime needing our code or even the chat template.

A chat template is a Jinja program and may do anything with a message; we accept it only when
it writes the message text verbatim, exactly once, and the text around it does not depend on
the message (checked with two different placeholders). Anything else could not be expressed
as a string with one "{input}" in it, and is refused rather than approximated. A template that
trims the message (Llama 3's does) passes: tagi writes an input as given, which is what the
template renders for any input without leading or trailing whitespace.

BOS: many chat templates start with `{{ bos_token }}`, and a tokenizer that adds BOS by itself
would then give two of them (the rendered text is tokenized like any input, with the special
tokens the tokenizer adds). Such a template starts without its BOS text, so the prompt's token
ids are those of `apply_chat_template(..., tokenize=True)`, which is what vLLM's and
transformers' own chat paths feed the model.
"""

from __future__ import annotations

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from hypernet.errors import UserError

PLAIN_INPUT_TEMPLATE = "{input}\n"
"""The input template of a causal base without a chat template: the newline ends the prompt, so
the answer starts on a line of its own."""

_PLACEHOLDERS = ("tagiInputPlaceholder7q3", "tagiOtherPlaceholderX9k")
"""Two message texts no template writes by itself: letters and digits only, so no template escapes
them, in mixed case, so a template that changes case does not pass as verbatim."""


def input_template_for(tokenizer: PreTrainedTokenizerBase) -> str:
    """The input template of a causal base's tokenizer: its chat template around "{input}", or
    PLAIN_INPUT_TEMPLATE when it has none. UserError (one line) when the chat template fails to
    render or does not write the message verbatim exactly once."""
    if not getattr(tokenizer, "chat_template", None):
        return PLAIN_INPUT_TEMPLATE
    first, second = (_render(tokenizer, placeholder) for placeholder in _PLACEHOLDERS)
    template = first.replace(_PLACEHOLDERS[0], "{input}")
    if (
        first.count(_PLACEHOLDERS[0]) != 1
        or second.count(_PLACEHOLDERS[1]) != 1
        or second.replace(_PLACEHOLDERS[1], "{input}") != template
        or template.count("{input}") != 1
    ):
        raise UserError(
            "the base's chat template does not write the user message verbatim exactly once, so it cannot be one "
            "input_template; give the checkpoint an explicit input_template"
        )
    return _without_doubled_bos(tokenizer, template)


def _render(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    try:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    except (TemplateError, TypeError, ValueError) as err:  # the template's own raise_exception, or its bad Jinja
        raise UserError(f"the base's chat template cannot render one user message: {err}") from err
    if not isinstance(rendered, str):
        raise UserError(f"the base's chat template rendered {type(rendered).__name__}, not text")
    return rendered


def _without_doubled_bos(tokenizer: PreTrainedTokenizerBase, template: str) -> str:
    """The template without a leading BOS text when the tokenizer adds BOS itself."""
    bos = tokenizer.bos_token
    if not bos or not template.startswith(bos) or not adds_bos(tokenizer):
        return template
    return template[len(bos) :]


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether tokenizing a text puts the BOS token in front of it."""
    if tokenizer.bos_token_id is None:
        return False
    with_special = tokenizer("a")["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return len(with_special) > len(without) and with_special[0] == tokenizer.bos_token_id
