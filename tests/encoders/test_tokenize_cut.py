"""Long texts are cut before tokenizing (memory bounded by max length x batch), and every text
still gets exactly the tokens of the whole text truncated to the max length."""
from __future__ import annotations

import random

import pytest

import encoders.dual_encoder as dual_encoder
from encoders.dual_encoder import tokenize

CORPUS = ["the quick brown fox jumps over the lazy dog", "how do i bake sourdough bread at home?",
          "café naïve résumé déjà vu", "東京は日本の首都です", "ｆｕｌｌ ｗｉｄｔｈ ｔｅｘｔ", "1234 5678 90",
          "!!! ??? ... --- ***", "a\u0308\u0323 o\u0301 \u1100\u1161\u11a8"] * 40


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoTokenizer

    from encoders.sources import DEFAULT_ENCODER, resolve_encoder
    return AutoTokenizer.from_pretrained(resolve_encoder(DEFAULT_ENCODER))


def byte_level_bpe():
    """A GPT-2 style tokenizer (byte-level BPE; its pre-tokenizer regex looks ahead), trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>", "<pad>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                           special_tokens=[("<s>", 0), ("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def unigram_nfkc():
    """A SentencePiece-style tokenizer (Unigram, Metaspace, NFKC normalization), trained here."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    backend = Tokenizer(models.Unigram())
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.train_from_iterator(CORPUS, trainers.UnigramTrainer(
        vocab_size=150, special_tokens=["<pad>", "<unk>", "</s>"], unk_token="<unk>"))
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module")
def tokenizers(minilm):
    return {"minilm": minilm, "byte-level-bpe": byte_level_bpe(), "unigram-nfkc": unigram_nfkc()}


class Spy:
    """A tokenizer that records the longest text it was given."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.longest = 0

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, texts, **kwargs):
        self.longest = max([self.longest, *map(len, texts)])
        return self._tokenizer(texts, **kwargs)


def whole(tokenizer, texts, max_length):
    """What tokenizing the whole texts gives: (ids, truncated) per text."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    return [(ids, bool(e.overflowing)) for ids, e in zip(encoded["input_ids"], encoded.encodings)]


def test_a_huge_text_is_tokenized_from_a_bounded_prefix_with_the_same_tokens(minilm):
    rng = random.Random(0)
    words = " ".join(CORPUS).split()
    huge = " ".join(rng.choice(words) for _ in range(300_000))          # ~2 MB
    texts = ["a short question?", huge, "another one", huge[:5000]]
    for max_length in (16, 256):
        spy = Spy(minilm)
        got = tokenize(spy, texts, max_length)
        assert [(t.ids, t.truncated) for t in got] == whole(minilm, texts, max_length)
        assert got[1].truncated and not got[0].truncated
        # The tokenizer never saw more than the first cut: memory is bounded by the max length.
        assert spy.longest <= max(dual_encoder.CUT_MIN_CHARS, dual_encoder.CUT_CHARS_PER_TOKEN * max_length)


def tricky_texts() -> list[str]:
    rng = random.Random(1)
    words = " ".join(CORPUS).split()
    prose = " ".join(rng.choice(words) for _ in range(3000))
    return [
        "a" * 5000 + " tail words here",                                  # a long run without spaces
        "x" * 150 + " " + prose,                                         # longer than a word may be
        "one two three " + "z" * 6000,
        "e" + "\u0301" * 3000 + " after the marks " + prose,            # a long run of combining marks
        "cafe\u0301 na\u0308ive " * 400,                                 # marks that compose (NFC/NFKC)
        "a\u0323\u0308 " * 700 + "a\u0308\u0323" * 700,                  # marks that reorder
        "\u1100\u1161\u11a8" * 1500,                                     # Hangul jamo that compose
        "東京は日本の首都です" * 600,                                   # CJK, no spaces
        "日本 語 " * 800 + prose,
        "word" + " " * 500 + prose,                                      # long whitespace runs
        "\t\n  ".join(words[:500]) + "\n" * 300 + prose,
        "!?" * 3000 + " " + prose,                                       # punctuation runs
        "\U0001F469\u200d\U0001F469\u200d\U0001F467 " * 600,            # emoji ZWJ sequences
        "ｆｕｌｌ ｗｉｄｔｈ " * 700,                                    # NFKC changes the width
        "1234567890" * 800 + " " + prose,
        prose,
        prose[:997], prose[:1024], prose[:1025],                         # around the first cut
    ]


@pytest.mark.parametrize("first_cut,widen", [(1, 2), (37, 3), (1000, 4)])
@pytest.mark.parametrize("max_length", [8, 32])
@pytest.mark.parametrize("name", ["minilm", "byte-level-bpe", "unigram-nfkc"])
def test_cuts_anywhere_give_the_whole_texts_tokens(tokenizers, monkeypatch, name, max_length, first_cut, widen):
    """Cuts forced to land inside words, mark runs, CJK runs and whitespace: a cut that could
    change a kept token is widened and retried, so the tokens are always the whole text's."""
    monkeypatch.setattr(dual_encoder, "CUT_MIN_CHARS", first_cut)
    monkeypatch.setattr(dual_encoder, "CUT_CHARS_PER_TOKEN", 0)
    monkeypatch.setattr(dual_encoder, "CUT_WIDEN", widen)
    tokenizer = tokenizers[name]
    texts = tricky_texts()
    got = tokenize(tokenizer, texts, max_length)
    expected = whole(tokenizer, texts, max_length)
    for text, tokens, (ids, truncated) in zip(texts, got, expected):
        assert (tokens.ids, tokens.truncated) == (ids, truncated), repr(text[:60])
