"""VIRT (encoders/virt.py): the layer and head maps, the token alignment between the teacher's pair
and the towers (special tokens, truncation on either side), the teacher's renormalised cross
blocks, the student's virtual maps, the loss, and where its gradients go."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from encoders.checkpoint import build_student
from encoders.config import StudentConfig
from encoders.layer_cache import LowerStates, encoder_layers, upper_forward
from encoders.sources import DEFAULT_ENCODER, resolve_encoder
from encoders.teacher import load_teacher
from encoders.virt import (Alignment, Virt, align, cross_blocks, head_average, map_loss, teacher_layer_for,
                           virtual_map)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_encoder(DEFAULT_ENCODER))


def test_layers_map_proportionally():
    assert [teacher_layer_for(s, 6, 6) for s in range(6)] == list(range(6))        # the packaged models
    assert [teacher_layer_for(s, 3, 6) for s in range(3)] == [1, 3, 5]              # --layers 3
    assert [teacher_layer_for(s, 2, 3) for s in range(2)] == [0, 2]
    assert [teacher_layer_for(s, 6, 3) for s in range(6)] == [0, 0, 0, 1, 1, 2]     # a deeper student
    with pytest.raises(ValueError, match="student layer 6"):
        teacher_layer_for(6, 6, 6)


def test_heads_average_into_the_students_count():
    assert torch.equal(head_average(12, 12), torch.eye(12))
    groups = head_average(4, 12)
    assert groups.shape == (4, 12) and torch.allclose(groups.sum(dim=1), torch.ones(4))
    assert torch.equal(groups[1], torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0]) / 3)
    assert torch.allclose(head_average(5, 12), torch.full((5, 12), 1 / 12))


def _views(tokenizer, lefts, rights, left_max, right_max, teacher_max):
    """The towers' ids and the teacher's ids / sequence ids, as the trainer and Virt make them."""
    left_ids = [tokenizer(t, truncation=True, max_length=left_max)["input_ids"] for t in lefts]
    right_ids = [tokenizer(t, truncation=True, max_length=right_max)["input_ids"] for t in rights]
    encoded = tokenizer(lefts, rights, truncation="longest_first", max_length=teacher_max)
    sequences = [encoded.sequence_ids(i) for i in range(len(lefts))]
    return left_ids, right_ids, encoded["input_ids"], sequences


def _alignment(tokenizer, lefts, rights, left_max=16, right_max=16, teacher_max=32) -> tuple[Alignment, list]:
    left_ids, right_ids, teacher_ids, sequences = _views(tokenizer, lefts, rights, left_max, right_max, teacher_max)
    alignment = align(left_ids, right_ids, teacher_ids, sequences, set(tokenizer.all_special_ids),
                      tokenizer.cls_token_id, max(map(len, left_ids)), max(map(len, right_ids)))
    return alignment, teacher_ids


def test_alignment_of_a_short_pair_skips_the_special_tokens(tokenizer):
    # One word piece per word: [CLS] red green blue [SEP] | [CLS] cat dog [SEP];
    # the teacher: [CLS] red green blue [SEP] cat dog [SEP].
    alignment, teacher_ids = _alignment(tokenizer, ["red green blue"], ["cat dog"])
    assert len(teacher_ids[0]) == 8
    assert alignment.left_ok.tolist() == [[True, True, True, True, False]]          # [CLS] + 3 words, not [SEP]
    assert alignment.left_pos[0, :4].tolist() == [0, 1, 2, 3]
    assert alignment.right_ok.tolist() == [[False, True, True, False]]              # the right [CLS] is not aligned
    assert alignment.right_pos[0, 1:3].tolist() == [5, 6]
    assert teacher_ids[0][5] == tokenizer.convert_tokens_to_ids("cat")


def test_alignment_pads_and_masks_per_pair(tokenizer):
    alignment, _ = _alignment(tokenizer, ["red green blue", "one"], ["cat dog", "a b c d e"])
    assert alignment.left_ok.shape == (2, 5) and alignment.right_ok.shape == (2, 7)
    assert alignment.left_ok[1].tolist() == [True, True, False, False, False]
    assert alignment.right_ok[1].tolist() == [False, True, True, True, True, True, False]
    assert alignment.right_pos[1, 1:6].tolist() == [3, 4, 5, 6, 7]     # [CLS] one [SEP] a ...


def test_teacher_truncation_of_the_right_text_masks_what_it_cut(tokenizer):
    # Teacher max 10: [CLS] red green [SEP] + 5 right tokens [SEP]: "a b c d e f g h" keeps a..e.
    alignment, teacher_ids = _alignment(tokenizer, ["red green"], ["a b c d e f g h"], teacher_max=10)
    assert len(teacher_ids[0]) == 10
    assert alignment.left_ok[0].tolist() == [True, True, True, False]
    assert alignment.right_ok[0].tolist() == [False] + [True] * 5 + [False] * 4       # f g h and [SEP] masked
    assert alignment.right_pos[0, 1:6].tolist() == [4, 5, 6, 7, 8]


def test_teacher_truncation_of_the_left_text_masks_what_it_cut(tokenizer):
    # The longer text loses tokens first: the left keeps 5 of its 8 words, the right all 2.
    alignment, teacher_ids = _alignment(tokenizer, ["a b c d e f g h"], ["cat dog"], teacher_max=10)
    assert alignment.left_ok[0].tolist() == [True] * 6 + [False] * 4
    assert alignment.right_ok[0].tolist() == [False, True, True, False]
    assert alignment.right_pos[0, 1:3].tolist() == [7, 8]


def test_tower_truncation_masks_what_only_the_teacher_has(tokenizer):
    # The left tower keeps [CLS] a b [SEP] (max length 4); the teacher has a..h: only a, b align,
    # and the right side starts where the teacher put it, after all eight left words.
    alignment, _ = _alignment(tokenizer, ["a b c d e f g h"], ["cat dog"], left_max=4, right_max=3, teacher_max=32)
    assert alignment.left_ok[0].tolist() == [True, True, True, False]
    assert alignment.right_ok[0].tolist() == [False, True, False]                     # [CLS] cat [SEP]: cat only
    assert alignment.right_pos[0, 1].item() == 10


def test_teacher_blocks_are_the_softmax_of_the_score_blocks(tokenizer):
    """Renormalising a block of the full softmax is the softmax of the block's scores (eq. 6)."""
    alignment, teacher_ids = _alignment(tokenizer, ["red green blue", "one"], ["cat dog", "a b c d e"])
    length = max(map(len, teacher_ids))
    torch.manual_seed(0)
    scores = torch.randn(2, 3, length, length)
    left_to_right, right_to_left = cross_blocks(scores.softmax(dim=-1), alignment)
    assert left_to_right.shape == (2, 3, 5, 7) and right_to_left.shape == (2, 3, 7, 5)
    rows = left_to_right.sum(dim=-1)
    assert torch.allclose(rows, alignment.left_ok[:, None, :].float().expand_as(rows), atol=1e-6)
    rows = right_to_left.sum(dim=-1)
    assert torch.allclose(rows, alignment.right_ok[:, None, :].float().expand_as(rows), atol=1e-6)
    # Pair 0: left rows 0..3 (teacher 0..3) over right tokens cat, dog (teacher 5, 6).
    expected = scores[0][:, [0, 1, 2, 3]][:, :, [5, 6]].softmax(dim=-1)
    assert torch.allclose(left_to_right[0][:, :4, 1:3], expected, atol=1e-6)
    assert left_to_right[0][:, :, [0, 3]].abs().sum() == 0 and left_to_right[0][:, 4].abs().sum() == 0
    expected = scores[0][:, [5, 6]][:, :, [0, 1, 2, 3]].softmax(dim=-1)
    assert torch.allclose(right_to_left[0][:, 1:3, :4], expected, atol=1e-6)


def test_loss_is_zero_for_equal_maps_and_follows_eq_7(tokenizer):
    alignment, _ = _alignment(tokenizer, ["red green blue", "one"], ["cat dog", "a b c d e"])
    torch.manual_seed(1)
    maps = [(torch.rand(2, 2, 5, 7), torch.rand(2, 2, 7, 5)) for _ in range(2)]
    assert map_loss(maps, maps, alignment).item() == 0
    # Change one aligned entry of pair 0, layer 0, head 0, left->right by 0.3: the loss is
    # 0.3 / m / (2 layers * 2 heads * 2 directions), averaged over the 2 pairs.
    changed = [(maps[0][0].clone(), maps[0][1]), maps[1]]
    changed[0][0][0, 0, 1, 2] += 0.3
    m = alignment.left_ok[0].sum().item()
    assert map_loss(changed, maps, alignment).item() == pytest.approx(0.3 / m / 8 / 2, rel=1e-5)
    # A masked entry (the right tower's [CLS]) changes nothing.
    masked = [(maps[0][0].clone(), maps[0][1]), maps[1]]
    masked[0][0][0, 0, 1, 0] += 5.0
    assert map_loss(masked, maps, alignment).item() == 0


def test_virtual_maps_are_masked_softmaxes_over_the_other_tower(tiny_encoder_dir):
    config = StudentConfig(encoder=tiny_encoder_dir, left_tokens=4, right_tokens=6, left_max_length=16,
                           right_max_length=24, dim=8, head="de-cos")
    layer = encoder_layers(build_student(config).encoder.left)[0]
    torch.manual_seed(2)
    left, right = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    ok = torch.tensor([[False, True, True, True, False, False, False], [False, True, False, False, False, False, False]])
    maps = virtual_map(layer, layer, left, right, ok)
    assert maps.shape == (2, 2, 5, 7)                                         # 2 heads
    assert torch.allclose(maps.sum(dim=-1), torch.ones(2, 2, 5))
    assert maps[~ok[:, None, None, :].expand_as(maps)].abs().max() == 0
    assert torch.allclose(maps[1, :, :, 1], torch.ones(2, 5))                # one token left to attend to


TEXTS = [("how are epithelial tissues joined together", "epithelial tissues are joined by junctions"),
         ("what is a falcon", "a falcon is a bird of prey that hunts small animals at high speed"),
         ("who wrote the violin concerto", "it was written in the winter")]


def _student_and_virt(tiny_encoder_dir, tiny_teacher_dir, trained):
    config = StudentConfig(encoder=tiny_encoder_dir, left_tokens=4, right_tokens=6, left_max_length=16,
                           right_max_length=24, dim=8, pooled=True, cosine_skip=True, head="dipair")
    student = build_student(config, seed=0)
    teacher = load_teacher(tiny_teacher_dir, attn_implementation="eager")
    layers = encoder_layers(student.encoder.left)
    return student, Virt(teacher, 1.0, layers, trained), layers


def test_gradients_reach_the_trained_layers_queries_and_keys_only(tiny_encoder_dir, tiny_teacher_dir):
    """Top layer trained on cached lower states (what --train-layers 1 runs): the VIRT loss moves
    that layer's query and key weights and nothing else of the encoder."""
    student, virt, layers = _student_and_virt(tiny_encoder_dir, tiny_teacher_dir, trained=[2])
    lefts, rights = [t[0] for t in TEXTS], [t[1] for t in TEXTS]
    inputs, ids = {}, {}
    for side, texts in (("left", lefts), ("right", rights)):
        encoder = student.encoder.side(side)
        cache = LowerStates.build(encoder, texts, 1, batch_size=4, device="cpu")
        states, mask = cache.batch(cache.rows_of(texts), "cpu")
        collected = []
        upper_forward(encoder, states, mask, 1, collected)
        inputs[side] = collected
        ids[side] = [t.ids for t in encoder.tokenize(texts)]
    maps, alignment = virt.teacher_maps(lefts, rights, ids["left"], ids["right"], inputs["left"][0].shape[1],
                                        inputs["right"][0].shape[1], "cpu")
    assert [m[0].shape for m in maps] == [(3, 2, inputs["left"][0].shape[1], inputs["right"][0].shape[1])]
    student.zero_grad()
    loss = virt.loss(layers, layers, inputs["left"], inputs["right"], maps, alignment)
    assert loss.item() > 0
    loss.backward()
    reached = {name for name, p in student.encoder.left.transformer.named_parameters()
               if p.grad is not None and p.grad.abs().sum() > 0}
    prefix = "encoder.layer.2.attention.self."
    assert {prefix + "query.weight", prefix + "key.weight", prefix + "query.bias"} <= reached
    # (The key bias adds the same score to a whole row: at most rounding reaches it.)
    assert reached <= {prefix + "query.weight", prefix + "key.weight", prefix + "query.bias", prefix + "key.bias"}
    assert all(p.grad is None for p in virt.teacher.parameters())


def test_student_maps_equal_to_the_teachers_give_zero_loss(tiny_encoder_dir, tiny_teacher_dir):
    """The teacher read as a student: its own states in its own layers give its own maps."""
    student, virt, layers = _student_and_virt(tiny_encoder_dir, tiny_teacher_dir, trained=[0, 1, 2])
    lefts, rights = [t[0] for t in TEXTS[:1]], [t[1] for t in TEXTS[:1]]
    teacher = virt.teacher
    encoded = teacher.tokenizer(lefts, rights, return_tensors="pt")
    ids = encoded["input_ids"][0].tolist()
    sep = ids.index(teacher.tokenizer.sep_token_id)
    with torch.no_grad():
        output = teacher.model.base_model(**encoded, output_hidden_states=True)
    # Split the teacher's own layer inputs into a left view [CLS] left [SEP] and a right view
    # [SEP] right [SEP] (its first slot stands where the right tower's [CLS] is, masked).
    left_states = [h[:, :sep + 1] for h in output.hidden_states[:-1]]
    right_states = [h[:, sep:] for h in output.hidden_states[:-1]]
    left_ids, right_ids = [ids[:sep + 1]], [[teacher.tokenizer.cls_token_id] + ids[sep + 1:]]
    maps, alignment = virt.teacher_maps(lefts, rights, left_ids, right_ids, sep + 1, len(ids) - sep, "cpu")
    teacher_layers = teacher.model.base_model.encoder.layer
    loss = virt.loss(teacher_layers, teacher_layers, left_states, right_states, maps, alignment)
    assert loss.item() == pytest.approx(0, abs=1e-5)
    # Other query weights give other maps (the tiny student starts from the teacher's encoder).
    with torch.no_grad():
        for layer in layers:
            layer.attention.self.query.weight.add_(torch.randn_like(layer.attention.self.query.weight))
    assert virt.loss(layers, layers, left_states, right_states, maps, alignment).item() > 1e-3
