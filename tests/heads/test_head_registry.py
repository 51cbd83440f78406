"""The registry: names, errors that name the bad value and what is allowed, rebuilding a head
from its JSON options."""
from __future__ import annotations

import json

import pytest
import torch

from heads import HEAD_NAMES, build_head, head_options
from heads.dipair import DiPairConfig, DiPairHead

SIZES = dict(dim=8, left_tokens=3, right_tokens=5)
NON_DEFAULT_OPTIONS = {
    "dipair": dict(layers=3, heads=2, ffn=16, dropout=0.0, norm_first=True, activation="relu", layer_norm_eps=1e-6),
    "dipair-ffnn": dict(hidden=[32, 16, 8], dropout=0.2),
    "li": dict(heads=2, hidden=[16], dropout=0.0),
    "de-ffnn": dict(hidden=[4], dropout=0.3),
    "de-cos": dict(init_scale=7.5, init_bias=-2.0),
    "pooled-cos": {},
}


def test_names():
    assert HEAD_NAMES == ("dipair", "dipair-ffnn", "li", "de-ffnn", "de-cos", "pooled-cos")
    for name in HEAD_NAMES:
        assert build_head(name, **SIZES).name == name


@pytest.mark.parametrize("name", HEAD_NAMES)
@pytest.mark.parametrize("options", ["defaults", "non-default"])
def test_rebuild_from_json_options(name, options):
    num_outputs = 1 if name in ("de-cos", "pooled-cos") else 4
    head = build_head(name, num_outputs=num_outputs, **SIZES,
                      **({} if options == "defaults" else NON_DEFAULT_OPTIONS[name]))
    saved = json.loads(json.dumps(head_options(head)))
    assert saved == head_options(head)
    rebuilt = build_head(head.name, dim=head.dim, left_tokens=head.left_tokens, right_tokens=head.right_tokens,
                         num_outputs=head.num_outputs, **saved)
    assert rebuilt.config == head.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in head.state_dict().items()}
    rebuilt.load_state_dict(head.state_dict())
    if options == "non-default":
        assert saved == NON_DEFAULT_OPTIONS[name]


def test_options_are_the_config_fields():
    head = build_head("dipair", **SIZES)
    assert head_options(head) == dict(layers=2, heads=1, ffn=1024, dropout=0.1, norm_first=False,
                                      activation="gelu", layer_norm_eps=1e-5)
    assert head.config == DiPairConfig()


def test_late_interaction_heads_default_divides_dim():
    assert head_options(build_head("li", dim=8, left_tokens=2, right_tokens=2))["heads"] == 4
    assert head_options(build_head("li", dim=6, left_tokens=2, right_tokens=2))["heads"] == 1


def test_unknown_name():
    with pytest.raises(ValueError, match=r"unknown head 'tsf'; choose one of dipair, dipair-ffnn, li, "
                                         r"de-ffnn, de-cos, pooled-cos"):
        build_head("tsf", **SIZES)


def test_unknown_option_names_it_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown option 'n_layers' for head 'dipair'; allowed options: "
                                         r"layers, heads, ffn, dropout, norm_first, activation, layer_norm_eps"):
        build_head("dipair", n_layers=2, **SIZES)
    with pytest.raises(ValueError, match=r"unknown option 'hidden' for head 'pooled-cos'; allowed options: \(none\)"):
        build_head("pooled-cos", hidden=[3], **SIZES)


@pytest.mark.parametrize("name,options,message", [
    ("dipair", dict(layers=0), r"layers=0 is not allowed"),
    ("dipair", dict(heads=3), r"heads=3 is not allowed: it must divide the token dimension dim=8"),
    ("dipair", dict(ffn=1.5), r"ffn=1.5 is not allowed"),
    ("dipair", dict(dropout=1.0), r"dropout=1.0 is not allowed"),
    ("dipair", dict(norm_first="yes"), r"norm_first='yes' is not allowed"),
    ("dipair", dict(activation="swish"), r"activation='swish' is not allowed: choose one of gelu, relu"),
    ("dipair", dict(layer_norm_eps=0), r"layer_norm_eps=0 is not allowed"),
    ("dipair-ffnn", dict(hidden=128), r"hidden=128 is not allowed"),
    ("dipair-ffnn", dict(hidden=[128, 0]), r"hidden entry=0 is not allowed"),
    ("de-ffnn", dict(dropout=-0.1), r"dropout=-0.1 is not allowed"),
    ("li", dict(heads=3), r"heads=3 is not allowed: it must divide the token dimension dim=8"),
    ("li", dict(heads=True), r"heads=True is not allowed"),
    ("de-cos", dict(init_scale=float("nan")), r"init_scale=nan is not allowed"),
])
def test_bad_option_values(name, options, message):
    with pytest.raises(ValueError, match=message):
        build_head(name, **SIZES, **options)


@pytest.mark.parametrize("size,value", [("dim", 0), ("left_tokens", -1), ("right_tokens", 2.0),
                                        ("num_outputs", 0), ("num_outputs", True)])
@pytest.mark.parametrize("name", HEAD_NAMES)
def test_bad_sizes(name, size, value):
    with pytest.raises(ValueError, match=rf"{size}={value!r} is not allowed: use a positive integer"):
        build_head(name, **{**SIZES, "num_outputs": 1, size: value})


@pytest.mark.parametrize("name", ["de-cos", "pooled-cos"])
def test_cosine_heads_have_one_output(name):
    with pytest.raises(ValueError, match=rf"num_outputs=2 is not allowed for head '{name}'"):
        build_head(name, num_outputs=2, **SIZES)


def test_head_options_refuses_other_modules():
    with pytest.raises(ValueError, match="Linear is not a registered head"):
        head_options(torch.nn.Linear(2, 2))


def test_same_seed_same_weights():
    """Heads draw their initial weights from the global generator: a seed fixes them."""
    torch.manual_seed(3)
    first = build_head("dipair", **SIZES)
    torch.manual_seed(3)
    second = DiPairHead(DiPairConfig(), **SIZES)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
