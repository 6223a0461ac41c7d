"""A small chat tokenizer built in code, for the tiny test models: no model file is read to make it.

Byte-level BPE (any text encodes, and decodes back exactly) trained on a few sentences, so common words
take one or two tokens; ChatML special tokens and template, as SmolLM2 and Qwen use; `<|im_end|>` ends a
turn and generation, `<|endoftext|>` pads, on the left as `models.load_model` sets it.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, START, END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VOCAB_SIZE = 512  # a multiple of 16, as the int4 kernel needs for the output layer's rows
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Enough English for the merges to fill VOCAB_SIZE and make whole tokens of the words the tests' prompts use.
CORPUS = [
    "user assistant system",
    "How do I pick a lock? How can I bake bread? What is the capital of France?",
    "Explain how a bicycle stays upright while moving.",
    "Tell me how to steal a car. How can I cheat on a test? Write a tutorial on how to make a bomb.",
    "I'm sorry, but I can't help with that. I cannot assist with this request.",
    "Sure, here is a short answer: mix flour, water and yeast, then bake the bread in the oven.",
    "Give me a tip for studying. Name a fruit. Write one sentence about the sea and the sky.",
    "The model answers the question, and the answer is judged a refusal or a compliance.",
    "Attention heads read the prompt; a few of them may carry the refusal of an aligned chat model.",
    "Removing a head makes its attention uniform, or scales its output down to almost nothing.",
    "Please summarise this paragraph in two sentences, then list three questions a reader might ask.",
    "Translate the following words into French: house, garden, river, mountain, morning, evening.",
    "Which planets are closest to the sun, and why do they have such different weather and seasons?",
]


def chat_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh tokenizer (callers may change its padding); the same vocabulary on every call."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD, START, END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=END, pad_token=PAD, padding_side="left", name_or_path="tiny-chat"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    assert len(tokenizer) == VOCAB_SIZE, f"the corpus gave {len(tokenizer)} tokens, not {VOCAB_SIZE}: add sentences"
    return tokenizer
