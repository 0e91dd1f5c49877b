from __future__ import annotations

import torch

from ltray.losses.ntxent import ntxent
from ltray.models.branch import DENSE, PRUNED, DualBatchNorm, MaskedConv2d, set_branch
from ltray.models.contrastive import ContrastiveModel, build_model
from ltray.models.pruning import refresh_masks


def _sdclr_model() -> ContrastiveModel:
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", width=0.125, head="sdclr3", dual_bn=True).train()
    refresh_masks(model, 0.5)
    return model


def _views(b: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(b, 3, 16, 16, generator=g), torch.rand(b, 3, 16, 16, generator=g)


def _branches(model: torch.nn.Module) -> set[int]:
    return {m.branch for m in model.modules() if isinstance(m, (DualBatchNorm, MaskedConv2d))}


def _grads(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in params.items()}


def test_dense_forward_is_one_pass_over_both_views() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", width=0.125).train()
    v1, v2 = _views()
    z1, z2 = model(v1, v2)
    expected = model.head(model.backbone(torch.cat([v1, v2])))  # BN statistics over all 2B images
    assert z1.shape == (4, 128) and z2.shape == (4, 128)
    assert torch.equal(torch.cat([z1, z2]), expected)


def test_pruned_second_runs_dense_on_v1_and_pruned_on_v2_then_restores_dense() -> None:
    model = _sdclr_model()
    v1, v2 = _views()
    z1, z2 = model(v1, v2, pruned_second=True)
    assert _branches(model) == {DENSE}
    with torch.no_grad():
        dense = model.head(model.backbone(v1))
        set_branch(model, PRUNED)
        pruned = model.head(model.backbone(v2))
        set_branch(model, DENSE)
    assert torch.allclose(z1, dense, atol=1e-6)
    assert torch.allclose(z2, pruned, atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(model.head(model.backbone(v2)), z2, atol=1e-3)


def test_each_bn_copy_gets_gradient_only_from_its_branch() -> None:
    model = _sdclr_model()
    v1, v2 = _views()
    bn_params = {n: p for n, p in model.named_parameters() if ".bn_list." in n}
    copy0 = {n for n in bn_params if ".bn_list.0." in n}
    copy1 = {n for n in bn_params if ".bn_list.1." in n}
    r1, r2 = torch.randn(4, 128), torch.randn(4, 128)

    z1, z2 = model(v1, v2, pruned_second=True)
    ((z1 * r1).sum() + (z2 * r2).sum()).backward()
    both = _grads(bn_params)
    model.zero_grad(set_to_none=True)

    z1, _ = model(v1, v2, pruned_second=True)
    (z1 * r1).sum().backward()
    dense_only = _grads(bn_params)
    model.zero_grad(set_to_none=True)

    _, z2 = model(v1, v2, pruned_second=True)
    (z2 * r2).sum().backward()
    pruned_only = _grads(bn_params)

    assert all(dense_only[n] is None for n in copy1)
    assert all(pruned_only[n] is None for n in copy0)
    for n in copy0:
        assert torch.allclose(both[n], dense_only[n], atol=1e-6)
    for n in copy1:
        assert torch.allclose(both[n], pruned_only[n], atol=1e-6)
    assert all(bool(both[n].abs().sum() > 0) for n in bn_params)


def test_pruned_branch_sends_gradient_only_to_surviving_conv_weights() -> None:
    model = _sdclr_model()
    v1, v2 = _views()
    _, z2 = model(v1, v2, pruned_second=True)
    (z2 * torch.randn_like(z2)).sum().backward()
    convs = [m for m in model.backbone.modules() if isinstance(m, MaskedConv2d)]
    assert all(not m.prune_mask.all() for m in convs)
    for m in convs:
        assert torch.all(m.weight.grad[~m.prune_mask] == 0)


def test_one_backward_equals_the_reference_sum_of_two_detached_backwards() -> None:
    """sdclr.md §3: ∇L = ∇L(z¹, sg(z²)) + ∇L(sg(z¹), z²)."""
    model = _sdclr_model()
    v1, v2 = _views()
    params = dict(model.named_parameters())

    z1, z2 = model(v1, v2, pruned_second=True)
    ntxent(z1, z2, 0.2)[0].backward()
    single = _grads(params)
    model.zero_grad(set_to_none=True)

    z1, z2 = model(v1, v2, pruned_second=True)
    ntxent(z1, z2.detach(), 0.2)[0].backward()
    ntxent(z1.detach(), z2, 0.2)[0].backward()
    summed = _grads(params)

    for n in params:
        assert torch.allclose(single[n], summed[n], atol=1e-5, rtol=1e-4), n


def test_features_and_embed_use_the_dense_branch() -> None:
    model = _sdclr_model().eval()
    x, _ = _views()
    with torch.no_grad():
        dense_features = model.backbone(x)
        dense_embedding = model.head(dense_features)
        set_branch(model, PRUNED)
        f = model.features(x)
        e = model.embed(x)
    assert _branches(model) == {PRUNED}
    assert torch.equal(f, dense_features) and f.shape == (4, 64)
    assert torch.equal(e, dense_embedding) and e.shape == (4, 128)


def test_build_model_wires_sizes_through() -> None:
    model = build_model("resnet18_cifar", width=0.25, head="lotar", encoder_dim=10, out_dim=64)
    assert model.backbone.out_dim == 128
    assert model.head[0].in_features == 128 and model.head[0].out_features == 10
    z1, z2 = model(*_views(3))
    assert z1.shape == (3, 64) and z2.shape == (3, 64)
