"""The dual encoder: each side's transformer, first/last-N token selection, projection to D.

Shapes: B texts in a batch, T tokens after tokenization (padded), H the encoder's hidden
size, N the tokens kept for the side, D the projected size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from encoders.config import StudentConfig, Side


@dataclass(frozen=True)
class TokenizedText:
    """One text after tokenization: its token ids (special tokens included, at most the
    side's max length) and whether the tokenizer had to cut it."""
    ids: list[int]
    truncated: bool

    @property
    def num_tokens(self) -> int:
        return len(self.ids)


@dataclass
class TokenizedBatch:
    """Padded model input. input_ids, attention_mask: (B, T) int64."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device: torch.device | str) -> "TokenizedBatch":
        return TokenizedBatch(self.input_ids.to(device), self.attention_mask.to(device))


@dataclass
class EncodedSide:
    """Encoder output for a batch of texts of one side.

    tokens: (B, N, D) projected token embeddings; rows past a text's length are zero.
    mask:   (B, N) bool, True where ``tokens`` holds a real token.
    pooled: (B, H) L2-normalised mean of the unprojected token states, or None.
    """
    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor | None


# Long texts are cut before they are tokenized, so that tokenizing a batch costs memory in
# proportion to the side's max length, not to the longest text (a 50 MB text tokenized whole
# costs gigabytes). The first cut keeps this many characters per max-length token ...
CUT_CHARS_PER_TOKEN = 16
# ... and at least this many characters; a cut that does not prove itself safe is widened this
# many times and tried again, up to the whole text.
CUT_MIN_CHARS = 1024
CUT_WIDEN = 4
# Characters between the last kept token's end and the cut: room for normalizers and
# pre-tokenizers that look at a few following characters (Unicode compositions, regex lookahead).
CUT_MARGIN_CHARS = 64


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
             ) -> list[TokenizedText]:
    """Tokenize without padding (batches are padded later, after sorting by length).

    Every text gets exactly the tokens the tokenizer gives the whole text truncated to
    ``max_length``, but a long text is tokenized from a prefix: memory is bounded by the batch
    times the cut (``CUT_CHARS_PER_TOKEN`` x max length characters), whatever the texts' length.
    A prefix is used only when it proves that the whole text's kept tokens are its own
    (:func:`_prefix_decides`); otherwise the cut is widened and tried again, up to the whole text.
    Slow tokenizers (no word ids to prove it) and tokenizers that truncate from the left always
    see whole texts.
    """
    texts = list(texts)
    settled = _tokenize_cut(tokenizer, texts, max_length, list(range(len(texts))))
    return [settled[index][1] for index in range(len(texts))]


def cut_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> list[str]:
    """What the tokenizer may read in each text's place when it keeps ``max_length`` tokens
    (special tokens included): the text itself, or a prefix (the cut of :func:`tokenize`) whose
    kept tokens are proven to be the whole text's and which, like the whole text, has more tokens
    after them. So the prefix has every token that truncation to ``max_length`` could keep of the
    whole text, and is truncated as it is (the teacher cuts pairs with this, encoders/teacher.py).
    Texts no longer than the first cut are returned as they are, without tokenizing."""
    texts = list(texts)
    if not _cuttable(tokenizer):
        return texts
    long = [index for index, text in enumerate(texts) if len(text) > _first_cut(max_length)]
    settled = _tokenize_cut(tokenizer, texts, max_length, long)
    return [texts[index][:settled[index][0]] if index in settled else texts[index] for index in range(len(texts))]


def _cuttable(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether a cut can prove itself: a fast tokenizer (word ids) that truncates on the right."""
    return bool(getattr(tokenizer, "is_fast", False)) and getattr(tokenizer, "truncation_side", "right") == "right"


def _first_cut(max_length: int) -> int:
    return max(CUT_MIN_CHARS, CUT_CHARS_PER_TOKEN * max_length)


def _tokenize_cut(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int,
                  pending: list[int]) -> dict[int, tuple[int, TokenizedText]]:
    """Tokenize ``texts[i]`` for each index ``i`` in ``pending`` from the shortest cut that proves
    itself (:func:`tokenize`) -> {i: (characters tokenized, its tokens truncated to max_length)}."""
    cuttable = _cuttable(tokenizer)
    width = _first_cut(max_length)
    results: dict[int, tuple[int, TokenizedText]] = {}
    while pending:
        pieces = [texts[i][:width] if cuttable else texts[i] for i in pending]
        encoded = tokenizer(pieces, truncation=True, max_length=max_length, padding=False)
        retry = []
        for row, index in enumerate(pending):
            ids = encoded["input_ids"][row]
            if len(pieces[row]) == len(texts[index]):      # the whole text: as it always was
                if encoded.encodings is not None:
                    # Fast tokenizers record what truncation cut off; that is the exact signal.
                    truncated = bool(encoded.encodings[row].overflowing)
                else:
                    # Slow tokenizers do not; a text that fills the max length is counted as cut.
                    truncated = len(ids) >= max_length
                results[index] = (len(pieces[row]), TokenizedText(ids, truncated))
            elif _prefix_decides(encoded.encodings[row], len(pieces[row])):
                # The kept tokens end words before the cut; the text goes on past them: truncated.
                results[index] = (len(pieces[row]), TokenizedText(ids, True))
            else:
                retry.append(index)
        pending = retry
        width *= CUT_WIDEN
    return results


def _prefix_decides(encoding, cut: int) -> bool:
    """Whether a prefix of ``cut`` characters, tokenized and truncated into ``encoding``, has
    exactly the kept tokens of the whole text.

    A fast tokenizer normalizes, splits into words (pre-tokenization), tokenizes each word on its
    own and then truncates. A word's tokens depend only on the word, so the kept tokens are the
    whole text's when the word of the last kept token ends inside the prefix, is followed by at
    least two more words there (the next word is then complete too, and a pre-tokenizer's
    look-ahead cannot reach past it) and ends ``CUT_MARGIN_CHARS`` before the cut. Word ids come
    from the encoding and its overflow (what truncation cut off)."""
    kept = [(word, offset) for word, offset in zip(encoding.word_ids, encoding.offsets) if word is not None]
    if not kept or not encoding.overflowing:
        return False
    last_word, (_, end) = kept[-1]
    later = [word for part in encoding.overflowing for word in part.word_ids if word is not None]
    return bool(later) and max(later) >= last_word + 2 and end <= cut - CUT_MARGIN_CHARS


def collate(texts: Sequence[TokenizedText], pad_token_id: int) -> TokenizedBatch:
    """Pad to the longest text of this batch only, so sorted batches pay little padding."""
    longest = max(t.num_tokens for t in texts)
    input_ids = torch.full((len(texts), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(texts), longest), dtype=torch.long)
    for row, text in enumerate(texts):
        input_ids[row, :text.num_tokens] = torch.tensor(text.ids, dtype=torch.long)
        attention_mask[row, :text.num_tokens] = 1
    return TokenizedBatch(input_ids, attention_mask)


def select_tokens(states: torch.Tensor, attention_mask: torch.Tensor, count: int, selection: str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep ``count`` token states per text.

    states: (B, T, H); attention_mask: (B, T). Returns (B, count, H) states, left-aligned,
    and a (B, count) bool mask. ``first`` keeps positions 0..count-1 ([CLS] first); ``last``
    keeps the text's final ``count`` real tokens ([SEP] last). Texts shorter than ``count``
    get zero states and False mask past their length.
    """
    batch, length, hidden = states.shape
    lengths = attention_mask.sum(dim=1)                                    # (B,)
    slots = torch.arange(count, device=states.device)                      # (count,)
    if selection == "first":
        positions = slots.expand(batch, count)
    elif selection == "last":
        start = (lengths - count).clamp(min=0)                             # (B,)
        positions = start[:, None] + slots[None, :]
    else:
        raise ValueError(f"token selection {selection!r} is not allowed: choose first or last")
    mask = slots[None, :] < lengths.clamp(max=count)[:, None]              # (B, count)
    gathered = states.gather(1, positions.clamp(max=length - 1)[:, :, None].expand(batch, count, hidden))
    return gathered * mask[:, :, None].to(states.dtype), mask


class SideEncoder(nn.Module):
    """One side of the dual encoder: transformer (first K layers) -> keep N tokens -> project.

    The projection is shared by every token of the side (DiPair 3.4). ``transformer`` may be
    the same module object as the other side's when the encoder is shared.
    """

    def __init__(self, transformer: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 num_tokens: int, max_length: int, selection: str, dim: int | None, pooled: bool):
        super().__init__()
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.num_tokens = num_tokens
        self.max_length = max_length
        self.selection = selection
        self.keep_pooled = pooled
        hidden = transformer.config.hidden_size
        self.projection = nn.Identity() if dim is None else nn.Linear(hidden, dim)
        self.output_dim = hidden if dim is None else dim

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        return tokenize(self.tokenizer, texts, self.max_length)

    def collate(self, texts: Sequence[TokenizedText]) -> TokenizedBatch:
        return collate(texts, self.tokenizer.pad_token_id or 0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncodedSide:
        """input_ids, attention_mask: (B, T) -> EncodedSide with (B, N, D) tokens."""
        states = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.from_states(states, attention_mask)

    def from_states(self, states: torch.Tensor, attention_mask: torch.Tensor) -> EncodedSide:
        """The transformer's last hidden states (B, T, H) and attention mask (B, T) -> EncodedSide:
        what ``forward`` does after the transformer (also run on states from encoders/layer_cache.py)."""
        kept, mask = select_tokens(states, attention_mask, self.num_tokens, self.selection)
        # Projecting after selection costs N rows per text instead of T; padded rows stay zero.
        tokens = self.projection(kept) * mask[:, :, None].to(kept.dtype)
        pooled = mean_pool(states, attention_mask) if self.keep_pooled else None
        return EncodedSide(tokens=tokens, mask=mask, pooled=pooled)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> EncodedSide:
        """Encode raw texts in input order (plain PyTorch, no sorting): the reference path."""
        device = next(self.parameters()).device
        parts = []
        for start in range(0, len(texts), batch_size):
            batch = self.collate(self.tokenize(texts[start:start + batch_size])).to(device)
            parts.append(self(batch.input_ids, batch.attention_mask))
        return EncodedSide(
            tokens=torch.cat([p.tokens for p in parts]),
            mask=torch.cat([p.mask for p in parts]),
            pooled=torch.cat([p.pooled for p in parts]) if self.keep_pooled else None,
        )


def mean_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H): mean over real tokens, L2-normalised (the
    sentence-transformers pooling of all-MiniLM-L6-v2)."""
    weights = attention_mask.to(states.dtype)[:, :, None]
    summed = (states * weights).sum(dim=1)
    mean = summed / weights.sum(dim=1).clamp(min=1.0)
    return nn.functional.normalize(mean, dim=-1)


class DualEncoder(nn.Module):
    """The two sides. With ``shared_encoder`` both sides hold the same transformer."""

    def __init__(self, config: StudentConfig, left_transformer: PreTrainedModel,
                 right_transformer: PreTrainedModel, left_tokenizer: PreTrainedTokenizerBase,
                 right_tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        self.left = SideEncoder(left_transformer, left_tokenizer, config.left_tokens,
                                config.left_max_length, config.token_selection, config.dim, config.pooled)
        self.right = SideEncoder(right_transformer, right_tokenizer, config.right_tokens,
                                 config.right_max_length, config.token_selection, config.dim, config.pooled)

    def side(self, side: Side) -> SideEncoder:
        if side == "left":
            return self.left
        if side == "right":
            return self.right
        raise ValueError(f"side={side!r} is not allowed: choose left or right")
