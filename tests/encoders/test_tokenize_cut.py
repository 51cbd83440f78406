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


# --------------------------------------------------------------------------- pairs (the teacher)

class PairSpy(Spy):
    """A tokenizer that records the longest text it was given, one text or a pair's either side
    (``longest``), and the longest text it was given as part of a pair (``longest_in_pair``)."""

    longest_in_pair = 0

    def __call__(self, texts, pairs=None, **kwargs):
        self.longest = max([self.longest, *map(len, texts), *map(len, pairs or [])])
        if pairs is None:
            return self._tokenizer(texts, **kwargs)
        self.longest_in_pair = max([self.longest_in_pair, *map(len, texts), *map(len, pairs)])
        return self._tokenizer(texts, pairs, **kwargs)


def with_pair_template(tokenizer, single: str, pair: str, specials: list[str]):
    """A copy of a trained tokenizer that can also encode pairs (segment 1 for the second text)."""
    import copy

    from tokenizers import processors
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, tokenizer.convert_tokens_to_ids(t)) for t in specials])
    return tokenizer


@pytest.fixture(scope="module")
def pair_tokenizers(tokenizers):
    return {"minilm": tokenizers["minilm"],
            "byte-level-bpe": with_pair_template(tokenizers["byte-level-bpe"], "<s> $A </s>",
                                                 "<s> $A </s> $B:1 </s>:1", ["<s>", "</s>"]),
            "unigram-nfkc": with_pair_template(tokenizers["unigram-nfkc"], "$A </s>", "$A </s> $B:1 </s>:1",
                                               ["</s>"])}


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir):
    from encoders.teacher import load_teacher
    return load_teacher(tiny_teacher_dir)


def cross_encoder(teacher, tokenizer, max_length: int):
    from encoders.teacher import CrossEncoder
    return CrossEncoder(teacher.model, tokenizer, teacher.task.replace(max_length=max_length))


def whole_pairs(tokenizer, lefts, rights, max_length):
    """What tokenizing the whole pairs gives: (ids, token type ids, truncated) per pair, one pair
    at a time (the overflow of a pair grows with the product of its texts' lengths)."""
    pairs = []
    for left, right in zip(lefts, rights):
        encoded = tokenizer(left, right, truncation="longest_first", max_length=max_length, padding=False)
        pairs.append((encoded["input_ids"], encoded.get("token_type_ids"), bool(encoded.encodings[0].overflowing)))
    return pairs


def test_a_pair_with_a_huge_text_is_tokenized_from_bounded_prefixes_with_the_same_tokens(teacher, minilm):
    """The teacher (label_pairs, train_teacher, evaluate) cuts huge texts as stage one does: a
    pair gets exactly the tokens of its whole texts, and the tokenizer never reads more than the
    first cut of any text."""
    rng = random.Random(0)
    words = " ".join(CORPUS).split()
    huge = " ".join(rng.choice(words) for _ in range(300_000))          # ~2 MB
    # The reference tokenizes whole pairs, whose overflow (what truncation cut off) pairs every
    # piece of one text with every piece of the other: one huge text per pair keeps it feasible.
    lefts = ["a short question?", huge, "another one", huge[:5000], "tiny", huge[100:3000]]
    rights = ["a short answer", "short", huge[7:], "words " * 3, huge[:900], huge[5000:8000]]
    for max_length in (16, 17, 128):          # budgets (max length - 3 special tokens) odd and even
        spy = PairSpy(minilm)
        got = cross_encoder(teacher, spy, max_length).tokenize(lefts, rights)
        assert [(p.input_ids, p.token_type_ids, p.truncated) for p in got] == whole_pairs(minilm, lefts, rights,
                                                                                         max_length)
        assert got[1].truncated and not got[0].truncated
        single = max_length - minilm.num_special_tokens_to_add(pair=True) + minilm.num_special_tokens_to_add()
        first_cut = max(dual_encoder.CUT_MIN_CHARS, dual_encoder.CUT_CHARS_PER_TOKEN * single)
        # The huge text was read only up to the first cut; the last pair, both of its texts over
        # the budget, may be read further for an odd budget (which text is longer decides its
        # tokens): its texts alone, and in the pair a prefix long enough to compare as they do.
        assert spy.longest_in_pair <= max(first_cut, len(lefts[-1]), len(rights[-1]))
        assert spy.longest <= (max(first_cut, len(lefts[-1]), len(rights[-1])) if (max_length - 3) % 2 else first_cut)


@pytest.mark.parametrize("max_length", [16, 17])          # budgets 13 and 14 (3 special tokens)
def test_two_huge_texts_in_a_pair_get_the_whole_pairs_tokens_without_pairing_them_whole(teacher, minilm,
                                                                                       max_length):
    """Both texts of a pair over the budget, megabytes each: for an odd budget the longer text
    keeps the odd token (the right one on a tie), as truncating the whole pair would, while the
    pair is tokenized from short prefixes only (whole, its overflow would take gigabytes). The
    rule itself is checked against whole pairs in test_pairs_cut_anywhere_give_the_whole_pairs_tokens."""
    rng = random.Random(2)
    words = " ".join(CORPUS).split()
    huge = " ".join(rng.choice(words) for _ in range(150_000))          # ~1 MB
    lefts = [huge + " fox", huge, huge, huge[3:]]                        # left longer, right longer, tie, ...
    rights = [huge, huge + " fox", huge, huge]
    spy = PairSpy(minilm)
    got = cross_encoder(teacher, spy, max_length).tokenize(lefts, rights)
    budget = max_length - minilm.num_special_tokens_to_add(pair=True)
    for left, right, pair in zip(lefts, rights, got):
        def tokens(text):
            return minilm(text, add_special_tokens=False, verbose=False)["input_ids"]
        left_wins = len(tokens(left)) > len(tokens(right))
        keep_left = budget // 2 + (budget % 2 if left_wins else 0)
        kept_left, kept_right = tokens(left[:5000])[:keep_left], tokens(right[:5000])[:budget - keep_left]
        cls, sep = minilm.cls_token_id, minilm.sep_token_id               # BERT: [CLS] a [SEP] b [SEP]
        assert pair.input_ids == [cls, *kept_left, sep, *kept_right, sep] and pair.truncated
        assert pair.token_type_ids == [0] * (len(kept_left) + 2) + [1] * (len(kept_right) + 1)
    assert spy.longest_in_pair < 20_000 < len(huge)


@pytest.mark.parametrize("first_cut,widen", [(1, 2), (37, 3)])
@pytest.mark.parametrize("max_length", [8, 9, 32])       # budgets odd and even (3 or 2 special tokens)
@pytest.mark.parametrize("name", ["minilm", "byte-level-bpe", "unigram-nfkc"])
def test_pairs_cut_anywhere_give_the_whole_pairs_tokens(teacher, pair_tokenizers, monkeypatch, name, max_length,
                                                        first_cut, widen):
    """Cuts forced into every text, tricky and short, with token counts on both sides of the
    share a pair's truncation gives each text: each pair's tokens, segments and truncation flag
    are the whole pair's."""
    monkeypatch.setattr(dual_encoder, "CUT_MIN_CHARS", first_cut)
    monkeypatch.setattr(dual_encoder, "CUT_CHARS_PER_TOKEN", 0)
    monkeypatch.setattr(dual_encoder, "CUT_WIDEN", widen)
    tokenizer = pair_tokenizers[name]
    words = " ".join(CORPUS).split()
    # Shortened: the reference's overflow of a pair grows with the product of its texts' lengths.
    texts = [text[:150] for text in tricky_texts()] + [" ".join(words[:count]) for count in range(1, 40, 3)]
    # Pairs of equal texts and of texts one word apart: which text is longer decides an odd token.
    longer = [text + " fox" for text in texts]
    lefts = texts + texts[::-1] + texts + longer + texts
    rights = texts + texts + texts[len(texts) // 2:] + texts[:len(texts) // 2] + texts + longer
    got = cross_encoder(teacher, tokenizer, max_length).tokenize(lefts, rights)
    expected = whole_pairs(tokenizer, lefts, rights, max_length)
    for left, right, pair, (ids, kinds, truncated) in zip(lefts, rights, got, expected):
        assert (pair.input_ids, pair.token_type_ids, pair.truncated) == (ids, kinds, truncated), (left[:40], right[:40])
