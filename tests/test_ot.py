"""Log-domain Sinkhorn and SSA's symmetric OT alignment."""
from __future__ import annotations

import pytest
import torch

from tgcnet.ot import cosine_cost, plan_to_attention, sinkhorn_log, symmetric_ot_alignment


def _feats(b: int, n: int, m: int, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, generator=g), torch.randn(b, m, d, generator=g)


def _assert_marginals(plan: torch.Tensor, row_mask: torch.Tensor, col_mask: torch.Tensor, tol: float) -> None:
    rows = row_mask.float() / row_mask.float().sum(-1, keepdim=True)
    cols = col_mask.float() / col_mask.float().sum(-1, keepdim=True)
    torch.testing.assert_close(plan.sum(-1), rows, atol=tol, rtol=0)
    torch.testing.assert_close(plan.sum(-2), cols, atol=tol, rtol=0)


@pytest.mark.parametrize("n,m", [(5, 3), (12, 12), (49, 20)])
def test_sinkhorn_marginals_match_uniform_targets(n: int, m: int) -> None:
    x, y = _feats(3, n, m)
    plan = sinkhorn_log(cosine_cost(x, y), epsilon=0.05, n_iters=100)
    assert plan.shape == (3, n, m) and plan.dtype == torch.float32
    assert (plan >= 0).all()
    _assert_marginals(plan, torch.ones(3, n, dtype=torch.bool), torch.ones(3, m, dtype=torch.bool), 1e-4)


def test_sinkhorn_custom_weights_are_the_marginals() -> None:
    x, y = _feats(2, 6, 4)
    a = torch.tensor([[1.0, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]])
    b = torch.tensor([[1.0, 1, 2, 4], [3, 1, 1, 1]])
    plan = sinkhorn_log(cosine_cost(x, y), row_weights=a, col_weights=b, n_iters=200)
    torch.testing.assert_close(plan.sum(-1), a / a.sum(-1, keepdim=True), atol=1e-4, rtol=0)
    torch.testing.assert_close(plan.sum(-2), b / b.sum(-1, keepdim=True), atol=1e-4, rtol=0)


def test_sinkhorn_prefers_low_cost() -> None:
    # Identity-like cost: the plan must be (nearly) the diagonal.
    cost = 1.0 - torch.eye(4)[None]
    plan = sinkhorn_log(cost, epsilon=0.01, n_iters=50)
    assert torch.allclose(plan[0], torch.eye(4) / 4, atol=1e-4)


def test_both_directions_have_their_marginals_and_padding_gets_no_mass() -> None:
    x, y = _feats(2, 10, 7)
    token_mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    region_mask = torch.tensor([[True] * 10, [True] * 8 + [False] * 2])
    loss, p_i2t, p_t2i = symmetric_ot_alignment(x, y, token_mask, region_mask, n_iters=100)
    assert p_i2t.shape == (2, 10, 7) and p_t2i.shape == (2, 7, 10)
    _assert_marginals(p_i2t, region_mask, token_mask, 1e-4)
    _assert_marginals(p_t2i, token_mask, region_mask, 1e-4)
    assert p_i2t[1, :, 4:].abs().max() == 0 and p_i2t[1, 8:].abs().max() == 0
    assert p_t2i[1, 4:].abs().max() == 0 and p_t2i[1, :, 8:].abs().max() == 0
    assert 0 <= loss.item() <= 2


def test_alignment_loss_is_zero_for_matched_and_high_for_opposite_features() -> None:
    x, _ = _feats(1, 6, 1)
    aligned = symmetric_ot_alignment(x, x.clone()).loss  # each region has its own token
    shift = torch.zeros(16)
    shift[0] = 10.0
    opposite = symmetric_ot_alignment(x + shift, -x - shift).loss  # two clusters, far apart
    assert aligned.item() < 0.05
    assert opposite.item() > 1.5


def test_fully_padded_item_gets_zero_plan_without_poisoning_the_batch() -> None:
    x, y = _feats(2, 5, 4)
    token_mask = torch.tensor([[True] * 4, [False] * 4])
    loss, p_i2t, p_t2i = symmetric_ot_alignment(x, y, token_mask)
    assert torch.isfinite(loss)
    assert p_i2t[1].abs().max() == 0 and p_t2i[1].abs().max() == 0
    torch.testing.assert_close(p_i2t[0].sum(), torch.tensor(1.0), atol=1e-4, rtol=0)


@pytest.mark.parametrize("detach_plan", [True, False])
@pytest.mark.parametrize("case", ["all_equal", "one_token_left", "zero_vectors", "zero_tokens_only"])
def test_gradients_finite_for_degenerate_inputs(case: str, detach_plan: bool) -> None:
    b, n, m, d = 2, 9, 6, 8
    x, y = _feats(b, n, m, d)
    token_mask = torch.ones(b, m, dtype=torch.bool)
    if case == "all_equal":
        x, y = torch.ones(b, n, d), torch.ones(b, m, d)
    elif case == "one_token_left":
        token_mask[:, 1:] = False
    elif case == "zero_vectors":
        x, y = torch.zeros(b, n, d), torch.zeros(b, m, d)
    elif case == "zero_tokens_only":
        y = torch.zeros(b, m, d)
    x.requires_grad_(True)
    y.requires_grad_(True)
    loss, p_i2t, p_t2i = symmetric_ot_alignment(x, y, token_mask, detach_plan=detach_plan)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    assert torch.isfinite(p_i2t).all() and torch.isfinite(p_t2i).all()
    if case == "one_token_left":  # every region must send all its mass to the one token
        torch.testing.assert_close(p_i2t[:, :, 0], torch.full((b, n), 1.0 / n), atol=1e-5, rtol=0)


def test_gradient_pulls_regions_towards_tokens() -> None:
    x, y = _feats(1, 8, 4)
    x.requires_grad_(True)
    loss = symmetric_ot_alignment(x, y).loss
    loss.backward()
    with torch.no_grad():
        stepped = symmetric_ot_alignment(x - 0.5 * x.grad, y).loss
    assert stepped < loss


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_runs_under_low_precision_autocast_and_matches_float32(dtype: torch.dtype) -> None:
    x, y = _feats(2, 20, 8)
    ref = symmetric_ot_alignment(x, y)
    lin = torch.nn.Linear(16, 16)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(16))
        lin.bias.zero_()
    with torch.autocast("cpu", dtype=dtype):
        xa, ya = lin(x), lin(y)  # low-precision activations, as inside a model
        assert xa.dtype == dtype
        out = symmetric_ot_alignment(xa, ya, epsilon=0.05)
    assert out.loss.dtype == torch.float32 and out.plan_i2t.dtype == torch.float32
    assert torch.isfinite(out.plan_i2t).all()
    assert abs(out.loss.item() - ref.loss.item()) < 0.02
    _assert_marginals(out.plan_i2t, torch.ones(2, 20, dtype=torch.bool), torch.ones(2, 8, dtype=torch.bool), 1e-3)


def test_handles_vit_and_clip_sizes() -> None:
    # 14x14 regions of ViT-B/16 at 224 px against a 77-token CLIP context.
    x, y = _feats(2, 196, 77, d=32)
    token_mask = torch.arange(77)[None].expand(2, 77) < torch.tensor([[20], [77]])
    loss, p_i2t, p_t2i = symmetric_ot_alignment(x, y, token_mask)
    assert p_i2t.shape == (2, 196, 77) and p_t2i.shape == (2, 77, 196)
    assert torch.isfinite(loss) and torch.isfinite(p_i2t).all()
    _assert_marginals(p_i2t, torch.ones(2, 196, dtype=torch.bool), token_mask, 1e-3)


def test_plan_to_attention_rows_are_distributions() -> None:
    x, y = _feats(2, 6, 5)
    token_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    _, p_i2t, p_t2i = symmetric_ot_alignment(x, y, token_mask)
    attn = plan_to_attention(p_i2t)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 6))
    assert attn[1, :, 3:].abs().max() == 0
    back = plan_to_attention(p_t2i)
    assert back[1, 3:].abs().max() == 0  # padded tokens attend nowhere
    bias = plan_to_attention(p_i2t, log=True)
    assert torch.isfinite(bias).all()
    torch.testing.assert_close(bias.softmax(-1), attn, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"cost": torch.zeros(3, 3)}, "cost"),
        ({"cost": torch.zeros(1, 3, 3), "epsilon": 0.0}, "epsilon"),
        ({"cost": torch.zeros(1, 3, 3), "n_iters": 0}, "n_iters"),
        ({"cost": torch.zeros(1, 3, 3), "row_mask": torch.ones(1, 3)}, "row_mask"),
        ({"cost": torch.zeros(1, 3, 3), "col_mask": torch.ones(1, 2, dtype=torch.bool)}, "col_mask"),
    ],
)
def test_sinkhorn_rejects_bad_arguments_naming_the_field(kwargs: dict, field: str) -> None:
    cost = kwargs.pop("cost")
    with pytest.raises(ValueError, match=field):
        sinkhorn_log(cost, **kwargs)


def test_alignment_rejects_mismatched_feature_dims() -> None:
    with pytest.raises(ValueError, match="features"):
        symmetric_ot_alignment(torch.randn(1, 4, 8), torch.randn(1, 3, 6))
