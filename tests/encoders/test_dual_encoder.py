"""The dual encoder: shapes, first/last-N selection, masks, projection, K layers."""
import pytest
import torch

from encoders.config import StudentConfig
from encoders.dual_encoder import select_tokens, tokenize
from encoders.sources import load_pretrained


@pytest.fixture(scope="module")
def student(tiny_student_config):
    from encoders.checkpoint import build_student
    return build_student(tiny_student_config, seed=3)


def full_states(side, texts):
    batch = side.collate(side.tokenize(texts))
    with torch.no_grad():
        states = side.transformer(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    return states, batch.attention_mask


def test_shapes_and_dtypes(student):
    texts = ["a short one", "a somewhat longer text with several more words in it", "x"]
    left = student.encoder.left.encode(texts)
    right = student.encoder.right.encode(texts)
    assert left.tokens.shape == (3, 4, 8) and left.mask.shape == (3, 4)
    assert right.tokens.shape == (3, 6, 8) and right.mask.shape == (3, 6)
    assert left.mask.dtype == torch.bool
    assert left.pooled.shape == (3, 32)
    assert torch.allclose(left.pooled.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_first_n_are_the_projected_leading_states(student):
    side = student.encoder.left
    texts = ["the first four tokens are kept here", "another text of some length"]
    states, _ = full_states(side, texts)
    expected = side.projection(states[:, :4])
    got = side.encode(texts).tokens
    assert torch.allclose(got, expected, atol=1e-5)


def test_short_text_is_masked_and_zero_padded(student):
    side = student.encoder.right  # M = 6
    encoded = side.encode(["hi"])   # [CLS] hi [SEP]: 3 real tokens
    assert encoded.mask.tolist() == [[True, True, True, False, False, False]]
    assert torch.all(encoded.tokens[0, 3:] == 0)
    assert torch.all(encoded.tokens[0, :3].abs().sum(-1) > 0)


def test_last_n_selection_takes_the_final_real_tokens():
    states = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    kept, kept_mask = select_tokens(states, mask, 2, "last")
    assert kept[:, :, 0].tolist() == [[3.0, 4.0], [6.0, 7.0]]
    assert kept_mask.all()
    kept, kept_mask = select_tokens(states, mask, 4, "last")  # second text has only 3 tokens
    assert kept[1, :, 0].tolist() == [5.0, 6.0, 7.0, 0.0]
    assert kept_mask[1].tolist() == [True, True, True, False]


def test_first_n_selection_pads_when_batch_is_shorter_than_n():
    states = torch.ones(1, 2, 3)
    kept, kept_mask = select_tokens(states, torch.tensor([[1, 1]]), 4, "first")
    assert kept.shape == (1, 4, 3)
    assert kept_mask.tolist() == [[True, True, False, False]]
    assert torch.all(kept[0, 2:] == 0)


def test_identity_projection_keeps_the_hidden_size(tiny_student_config):
    from encoders.checkpoint import build_student
    student = build_student(tiny_student_config.replace(dim=None, head="de-cos"))
    assert student.encoder.left.encode(["hello"]).tokens.shape == (1, 4, 32)


def test_projection_is_shared_within_a_side_and_separate_across_sides(student):
    left, right = student.encoder.left, student.encoder.right
    assert left.transformer is right.transformer  # shared encoder by default
    assert left.projection is not right.projection
    assert not torch.equal(left.projection.weight, right.projection.weight)


def test_k_layers_equal_the_first_k_layers_of_the_full_model(tiny_encoder_dir):
    full, tokenizer = load_pretrained(tiny_encoder_dir)
    two, _ = load_pretrained(tiny_encoder_dir, layers=2)
    assert len(two.encoder.layer) == 2 and len(full.encoder.layer) == 3
    batch = tokenizer(["layers are kept from the bottom"], return_tensors="pt")
    with torch.no_grad():
        expected = full(**batch, output_hidden_states=True).hidden_states[2]
        got = two(**batch).last_hidden_state
    assert torch.allclose(got, expected, atol=1e-5)


def test_too_many_layers_is_refused(tiny_encoder_dir):
    with pytest.raises(ValueError, match="encoder_layers=9 .* choose 1..3"):
        load_pretrained(tiny_encoder_dir, layers=9)


def test_truncation_is_flagged(tiny_encoder_dir):
    _, tokenizer = load_pretrained(tiny_encoder_dir)
    short, long = tokenize(tokenizer, ["two words", "word " * 100], max_length=16)
    assert not short.truncated and short.num_tokens == 4
    assert long.truncated and long.num_tokens == 16


@pytest.mark.parametrize("changes, message", [
    ({"left_tokens": 0}, "left_tokens=0"),
    ({"token_selection": "middle"}, "token_selection='middle' .* first, last"),
    ({"right_tokens": 50, "right_max_length": 20}, "right_tokens=50 exceeds right_max_length=20"),
    ({"dim": -3}, "dim=-3"),
])
def test_bad_config_values_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        StudentConfig(**changes)
