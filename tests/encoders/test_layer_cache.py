"""Training the top encoder layers on cached lower-layer states (encoders/layer_cache.py): the cached
path gives what the full forward gives, and gradients reach only the top layers."""
from __future__ import annotations

import pytest
import torch

from encoders.checkpoint import build_student
from encoders.config import StudentConfig
from encoders.layer_cache import LowerStates, upper_forward, upper_parameters

TEXTS = ["How are epithelial tissues joined together?", "short", "Cross section of sclerenchyma fibers in plant "
         "ground tissue, a much longer sentence than the others so that it is cut at the max length " * 2,
         "In Biology, Tissue is a cellular organizational level."]


@pytest.fixture(scope="module")
def student(tiny_encoder_dir):
    # 3 layers, logits through a real head with the cosine skip's pooled embeddings.
    config = StudentConfig(encoder=tiny_encoder_dir, left_tokens=4, right_tokens=6, left_max_length=16,
                           right_max_length=24, dim=8, pooled=True, cosine_skip=True, head="dipair")
    return build_student(config, seed=0).eval()


@pytest.mark.parametrize("train_layers", [1, 2, 3])
def test_cached_path_gives_the_full_forward(student, train_layers):
    side = student.encoder.right
    cache = LowerStates.build(side, TEXTS + TEXTS[:2], train_layers, batch_size=2, device="cpu")
    assert len(cache.rows) == len(TEXTS)                        # each unique text once
    assert cache.bytes >= int(cache.lengths.sum()) * side.transformer.config.hidden_size * 2
    states, mask = cache.batch(cache.rows_of(TEXTS), "cpu")
    with torch.no_grad():
        cached = upper_forward(side, states, mask, train_layers)
    full = side.encode(TEXTS)
    assert torch.equal(cached.mask, full.mask)
    torch.testing.assert_close(cached.tokens, full.tokens, atol=2e-3, rtol=1e-2)   # float16 cache
    torch.testing.assert_close(cached.pooled, full.pooled, atol=2e-3, rtol=1e-2)
    # And the logits of whole pairs.
    left = student.encoder.left
    left_cache = LowerStates.build(left, TEXTS, train_layers, batch_size=4, device="cpu")
    with torch.no_grad():
        lstates, lmask = left_cache.batch(left_cache.rows_of(TEXTS[::-1]), "cpu")
        encoded_left = upper_forward(left, lstates, lmask, train_layers)
        logits = student.score_tokens(encoded_left.tokens, encoded_left.mask, cached.tokens, cached.mask,
                                      encoded_left.pooled, cached.pooled)
    torch.testing.assert_close(logits, student.score_texts(TEXTS[::-1], TEXTS), atol=5e-3, rtol=1e-2)


def test_minilm_cached_path_gives_the_full_forward():
    """The packaged 6-layer MiniLM, top 2 layers trained (what the WikiQA reproduction runs)."""
    from encoders.config import baseline_config
    config = StudentConfig(encoder=baseline_config().encoder, left_tokens=8, right_tokens=24, left_max_length=32,
                           right_max_length=64, dim=32, pooled=True, cosine_skip=True, head="dipair")
    side = build_student(config).eval().encoder.right
    cache = LowerStates.build(side, TEXTS, 2, batch_size=4, device="cpu")
    states, mask = cache.batch(cache.rows_of(TEXTS), "cpu")
    with torch.no_grad():
        cached = upper_forward(side, states, mask, 2)
    full = side.encode(TEXTS)
    torch.testing.assert_close(cached.tokens, full.tokens, atol=2e-3, rtol=1e-2)


def test_gradients_reach_only_the_top_layers(student):
    side = student.encoder.left
    train_layers = 1
    upper = {id(p) for _, p in upper_parameters(side, train_layers)}
    assert len(upper) == len(list(side.transformer.encoder.layer[-1].parameters()))
    cache = LowerStates.build(side, TEXTS, train_layers, batch_size=4, device="cpu")
    states, mask = cache.batch(cache.rows_of(TEXTS), "cpu")
    student.zero_grad()
    encoded = upper_forward(side, states, mask, train_layers)
    (encoded.tokens.sum() + encoded.pooled.sum()).backward()
    for name, parameter in side.transformer.named_parameters():
        reached = parameter.grad is not None and bool(parameter.grad.abs().sum() > 0)
        assert reached == (id(parameter) in upper), name
    assert side.projection.weight.grad is not None
    student.zero_grad()


def test_cache_file_is_reused_and_bad_k_is_refused(student, tmp_path):
    side = student.encoder.right
    first = LowerStates.build(side, TEXTS, 2, 4, "cpu", cache_dir=str(tmp_path))
    again = LowerStates.build(side, list(reversed(TEXTS)), 2, 4, "cpu", cache_dir=str(tmp_path))
    assert first.reused is None and again.reused is not None
    assert torch.equal(first.flat, again.flat) and first.rows == again.rows
    other = LowerStates.build(side, TEXTS, 1, 4, "cpu", cache_dir=str(tmp_path))   # other k: another file
    assert other.reused is None and len(list(tmp_path.glob("lower-states-*.safetensors"))) == 2
    with pytest.raises(ValueError, match="--train-layers 4 is not allowed: the encoder has 3 layers"):
        LowerStates.build(side, TEXTS, 4, 4, "cpu")
    with pytest.raises(KeyError, match="not in the lower-layer cache"):
        first.rows_of(["never cached"])
