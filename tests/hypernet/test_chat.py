"""The input template of a chat model (hypernet.chat): one user message around "{input}", no doubled BOS."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from hypernet.chat import PLAIN_INPUT_TEMPLATE, adds_bos, input_template_for
from hypernet.errors import UserError
from hypernet.tiny_causal import train_tokenizer

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3_LIKE = (  # as Llama 3's: BOS text first, the message trimmed
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant"
    "<|end_header_id|>\n\n{% endif %}"
)
SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def tokenizer(chat_template: str | None, add_bos: bool) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the chat specials; with `add_bos`, BOS goes in front of every text."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.add_special_tokens(SPECIALS)
    raw.add_tokens([chr(c) for c in range(32, 127)] + ["\n"])
    if add_bos:
        raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", raw.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    tok.chat_template = chat_template
    return tok


def chat_ids(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    """What transformers' (and vLLM's) chat path feeds the model: the rendered text, no added specials."""
    rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return tok(rendered, add_special_tokens=False)["input_ids"]


def test_no_chat_template_gives_the_plain_template():
    assert input_template_for(tokenizer(None, add_bos=False)) == PLAIN_INPUT_TEMPLATE == "{input}\n"


def test_chatml_template_wraps_the_input_in_one_user_turn_and_the_generation_prompt():
    tok = tokenizer(CHATML, add_bos=False)
    template = input_template_for(tok)
    assert template == "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
    text = "apple, {river} stone"  # braces in an input are text, not a format field
    assert tok(template.replace("{input}", text))["input_ids"] == chat_ids(tok, text)


def test_the_tiny_causal_chatml_tokenizer_gets_its_template_and_a_plain_one_the_newline():
    texts = ["Reverse the list: apple, river, stone.", "Count the words: seven bright table."] * 20
    chat = train_tokenizer(texts, 300, 512, chat_template=True)
    template = input_template_for(chat)
    assert template == "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
    assert chat(template.replace("{input}", texts[0]))["input_ids"] == chat_ids(chat, texts[0])
    assert input_template_for(train_tokenizer(texts, 300, 512, chat_template=False)) == PLAIN_INPUT_TEMPLATE


def test_leading_bos_is_dropped_when_the_tokenizer_adds_one_itself():
    adding = tokenizer(LLAMA3_LIKE, add_bos=True)
    assert adds_bos(adding)
    template = input_template_for(adding)
    assert template.startswith("<|start_header_id|>user") and "<s>" not in template
    ids = adding(template.replace("{input}", "seven bright table"))["input_ids"]
    assert ids.count(adding.bos_token_id) == 1 and ids == chat_ids(adding, "seven bright table")

    # A tokenizer that adds nothing keeps the template's own BOS: still exactly one.
    plain = tokenizer(LLAMA3_LIKE, add_bos=False)
    assert not adds_bos(plain)
    template = input_template_for(plain)
    assert template.startswith("<s><|start_header_id|>user")
    ids = plain(template.replace("{input}", "seven bright table"))["input_ids"]
    assert ids.count(plain.bos_token_id) == 1 and ids == chat_ids(plain, "seven bright table")


@pytest.mark.parametrize(
    "chat_template",
    [
        "{% for m in messages %}{{ m['content'] }}|{{ m['content'] }}{% endfor %}",  # twice
        "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}",  # not verbatim
        "{% for m in messages %}{{ m['content'] | length }}{% endfor %}",  # not at all
        "{% for m in messages %}{{ m['content'][:5] }} {{ m['content'][5:] }}{% endfor %}",  # split
        "{% for m in messages %}{input}{{ m['content'] }}{% endfor %}",  # a second {input} of its own
    ],
)
def test_a_template_that_does_not_write_the_message_verbatim_once_is_refused(chat_template):
    with pytest.raises(UserError, match="verbatim exactly once"):
        input_template_for(tokenizer(chat_template, add_bos=False))


def test_a_template_that_raises_is_refused_in_one_line():
    tok = tokenizer("{{ raise_exception('system message required') }}", add_bos=False)
    with pytest.raises(UserError, match="system message required") as info:
        input_template_for(tok)
    assert "\n" not in str(info.value)
