"""A small byte-level BPE tokenizer trained locally, so tests and the CPU testbed never need the Hub.

The tokenizer follows the conventions of the chat models the project targets (SmolLM2 and friends):
ChatML turns ``<|im_start|>role\\n...<|im_end|>\\n``, ``<|im_end|>`` as end-of-sequence, and no token
added implicitly by ``encode`` (the chat template writes every special token it needs). Byte-level
pre-tokenisation makes every string encodable and ``decode(encode(s)) == s`` exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
BOS_TOKEN = "<s>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
# Order fixes the ids: 0 unk, 1 bos, 2 pad, 3 im_start, 4 im_end; the byte alphabet follows.
SPECIAL_TOKENS = [UNK_TOKEN, BOS_TOKEN, PAD_TOKEN, IM_START, IM_END]

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A few paragraphs of plain English with punctuation and digits: enough for merges of common words when
# no texts are given. Tests that need realistic token statistics pass their own texts.
BUILTIN_CORPUS = [
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.",
    "Language models assign a probability to every sequence of tokens. Preference data pairs a prompt with "
    "a chosen and a rejected response, and a reward model learns to score the chosen one higher.",
    "Direct preference optimisation trains the policy directly on preferences, with an implicit reward "
    "equal to beta times the log ratio between the policy and the reference model.",
    "Some preferences are strong and some are weak. When one response is far better than the other, the "
    "margin between their rewards should be large; when both are similar, it should be small.",
    "Write a short poem about the sea. The waves roll in and out, the gulls cry over the harbour, and the "
    "boats rest on the sand until the tide returns in the evening.",
    "What is the capital of France? The capital of France is Paris, a city on the Seine with about two "
    "million inhabitants, known for its museums, its cafes and its bridges.",
    "Explain how to sort a list in Python. Use the built-in sorted function, which returns a new list, or "
    "call the sort method of the list to sort it in place. Both accept a key function and reverse=True.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # 5\n",
    "Please summarise the following text in one sentence. The meeting was moved from Monday to Tuesday at "
    "10:30 because three members of the team were travelling, and the agenda stays the same.",
    "Thank you for your question! I am happy to help. Here are three ideas: first, take a walk; second, "
    "read a book; third, call a friend you have not spoken to in a while.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14 2.5% $20 12/05/2024 (a) [b] {c} <d> 'e' \"f\" - _ = + *",
    "I am sorry, but I cannot help with that request. If you are in danger, please contact local "
    "emergency services. Is there something else I can do for you today?",
]


def build_local_tokenizer(
    texts: Iterable[str] | None = None,
    vocab_size: int = 512,
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` (the built-in corpus when None) and wrap it for transformers.

    Deterministic: the same texts and ``vocab_size`` give the same vocabulary and merges. Special tokens
    (``<unk>``, ``<s>``, ``<pad>``, ``<|im_start|>``, ``<|im_end|>``) are single ids and never split;
    ``eos_token`` is ``<|im_end|>`` so generation stops at the end of an assistant turn.
    Saves with ``save_pretrained`` and loads back with ``AutoTokenizer.from_pretrained(folder)``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size={vocab_size} is smaller than the byte alphabet plus special tokens "
            f"({len(alphabet) + len(SPECIAL_TOKENS)})"
        )
    corpus = list(BUILTIN_CORPUS if texts is None else texts)

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        # The full byte alphabet keeps every string encodable even if the corpus lacks some bytes.
        initial_alphabet=sorted(alphabet),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer, length=len(corpus))

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens=[IM_START],
        chat_template=chat_template,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
