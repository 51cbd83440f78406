"""heads/cosine_skip.py: the skip adds exactly scale * cos + bias, its fit is the maximum-likelihood
logistic fit (checked against scikit-learn), and students built with it check their inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from encoders.config import StudentConfig
from heads import CosineSkip, build_head


def tokens(batch: int, count: int, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.ones(batch, count, dtype=torch.bool)
    mask[1:, count - 1] = False
    return torch.randn(batch, count, dim), mask


@pytest.mark.parametrize("head", ["dipair", "dipair-ffnn", "li", "de-ffnn", "de-cos"])
def test_skip_adds_scale_times_cosine_plus_bias_to_the_head(head):
    torch.manual_seed(0)
    inner = build_head(head, dim=8, left_tokens=3, right_tokens=4).eval()
    skip = CosineSkip(inner).eval()
    with torch.no_grad():
        skip.scale.fill_(7.0)
        skip.bias.fill_(-2.5)
    left, left_mask = tokens(5, 3)
    right, right_mask = tokens(5, 4)
    left_pooled, right_pooled = torch.randn(5, 16), torch.randn(5, 16)
    got = skip(left, left_mask, right, right_mask, left_pooled=left_pooled, right_pooled=right_pooled)
    cosine = (F.normalize(left_pooled, dim=1) * F.normalize(right_pooled, dim=1)).sum(dim=1)
    expected = inner(left, left_mask, right, right_mask) + 7.0 * cosine[:, None] - 2.5
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert skip.name == head and got.shape == (5, 1)


def test_skip_needs_the_pooled_embeddings():
    skip = CosineSkip(build_head("dipair", dim=8, left_tokens=3, right_tokens=4))
    left, left_mask = tokens(2, 3)
    right, right_mask = tokens(2, 4)
    with pytest.raises(ValueError, match="pooled=True"):
        skip(left, left_mask, right, right_mask)
    with pytest.raises(ValueError, match=r"\(B, H\)"):
        skip(left, left_mask, right, right_mask, left_pooled=torch.randn(3, 16), right_pooled=torch.randn(3, 16))


def test_skip_refuses_a_head_that_reports_a_similarity():
    with pytest.raises(ValueError, match="not logits"):
        CosineSkip(build_head("pooled-cos", dim=8, left_tokens=1, right_tokens=1))


def test_fit_is_the_maximum_likelihood_logistic_fit_of_the_soft_labels():
    """Soft labels p as weights: each pair is a positive with weight p and a negative with weight
    1 - p, which is what scikit-learn's (unpenalised) LogisticRegression maximises too."""
    rng = np.random.default_rng(0)
    cosine = rng.uniform(0.2, 1.0, 400)
    soft = 1 / (1 + np.exp(-(12 * cosine - 8 + rng.normal(0, 1.5, 400))))
    skip = CosineSkip(build_head("dipair", dim=8, left_tokens=2, right_tokens=2))
    skip.fit_to(torch.tensor(cosine, dtype=torch.float32), torch.tensor(soft, dtype=torch.float32)[:, None])
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(
        np.concatenate([cosine, cosine])[:, None], np.r_[np.ones(400), np.zeros(400)],
        sample_weight=np.r_[soft, 1 - soft])
    assert float(skip.scale.detach()[0]) == pytest.approx(reference.coef_[0, 0], rel=1e-4)
    assert float(skip.bias.detach()[0]) == pytest.approx(reference.intercept_[0], rel=1e-4)


def test_fit_handles_k_classes_one_column_at_a_time():
    cosine = torch.linspace(0, 1, 50)
    low = torch.sigmoid(4 - 8 * cosine)
    soft = torch.stack([low, 1 - low], dim=1)
    skip = CosineSkip(build_head("dipair", dim=8, left_tokens=2, right_tokens=2, num_outputs=2))
    skip.fit_to(cosine, soft)
    torch.testing.assert_close(skip.scale.detach(), torch.tensor([-8.0, 8.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(skip.bias.detach(), torch.tensor([4.0, -4.0]), atol=1e-3, rtol=0)


def test_config_needs_pooled_for_the_skip():
    with pytest.raises(ValueError, match="cosine_skip=true needs pooled=true"):
        StudentConfig(cosine_skip=True, pooled=False)
    with pytest.raises(ValueError, match="cosine_skip='yes' is not allowed"):
        StudentConfig(cosine_skip="yes", pooled=True)
    assert StudentConfig.from_dict({**StudentConfig().to_dict()}).cosine_skip is False
