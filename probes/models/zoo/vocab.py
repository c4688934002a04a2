"""Word-level tokenizers built offline, for the embedded tiny models.

Every word of the data is one token, so a tiny model spends no capacity on sub-word spelling.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
BASE_SPECIAL = (PAD, BOS, EOS, UNK)


def word_tokenizer(
    words: Iterable[str], special_tokens: Iterable[str] = ("<image>",),
    named_tokens: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over ``words`` (punctuation split off), left-padded,
    adding ``<s>`` in front like Llama's. ``special_tokens`` (e.g. ``<image>``) are never split.
    ``named_tokens`` ({"start_image_token": "<img>"}, all also in ``special_tokens``) become
    the tokenizer's attributes of those names (and ``..._id``), as a hub tokenizer's
    ``extra_special_tokens`` do.

    >>> tok = word_tokenizer(["what", "shape", "?"])
    >>> tok.convert_ids_to_tokens(tok("What shape?")["input_ids"])
    ['<s>', 'what', 'shape', '?']
    """
    special = [*BASE_SPECIAL, *special_tokens]
    vocabulary = {token: index for index, token in enumerate(special)}
    for word in sorted(set(words) - set(special)):
        vocabulary[word] = len(vocabulary)
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocabulary[BOS])]
    )
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        padding_side="left", **(named_tokens or {}),
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    return tokenizer
