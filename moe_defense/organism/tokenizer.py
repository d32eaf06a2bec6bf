"""The organism's word-level tokenizer: one id per corpus word, so a 7-word request is 7 tokens.

Short sequences keep the route space small enough to search on a CPU, and the pilot measured the
phenomenon strongest with a word-level vocabulary. Words outside the corpus map to `<|unk|>`.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
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
    return _chat_tokenizer(backend, unk_token=UNKNOWN)


def subword_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A lower-casing byte-level BPE of `vocab_size` entries trained on `texts` (the preset's own training
    corpus, never test data): any text encodes, and words unseen in training split into known pieces."""
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    specials = [*SPECIAL_TOKENS.values(), *ROLE_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return _chat_tokenizer(backend)


def _chat_tokenizer(backend: Tokenizer, **tokens: str) -> PreTrainedTokenizerFast:
    """Both organisms' tokenizers around their backends: the same specials, role tokens, chat template and
    left padding, so everything downstream treats them alike."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS, **tokens)
    tokenizer.add_special_tokens({"additional_special_tokens": list(ROLE_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer
