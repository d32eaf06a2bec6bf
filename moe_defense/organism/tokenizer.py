"""The organism's word-level tokenizer: one id per corpus word, so a 7-word request is 7 tokens.

Short sequences keep the route space small enough to search on a CPU, and the pilot measured the
phenomenon strongest with a word-level vocabulary. Words outside the corpus map to `<|unk|>`.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from moe_defense.data.demo_corpus import corpus_vocabulary
from moe_defense.models.tokenizer import CHAT_TEMPLATE, ROLE_TOKENS, SPECIAL_TOKENS

UNKNOWN = "<|unk|>"


def word_level_tokenizer() -> PreTrainedTokenizerFast:
    """Specials first (stable ids), then the sorted corpus vocabulary; lower-cases its input."""
    specials = [*SPECIAL_TOKENS.values(), *ROLE_TOKENS, UNKNOWN]
    vocab = {token: i for i, token in enumerate([*specials, *corpus_vocabulary()])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNKNOWN))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=UNKNOWN, **SPECIAL_TOKENS)
    tokenizer.add_special_tokens({"additional_special_tokens": list(ROLE_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer
