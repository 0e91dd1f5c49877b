"""COLT's domain-level supervised contrastive term (Bai et al., ICLR 2023; the SupCon loss of Khosla et al.,
NeurIPS 2020, eq. 2, with the ID/OOD domain as the label). Spec: docs/math/colt.md §6."""

from __future__ import annotations

import torch

from ltray.losses.ntxent import per_image, similarity_logits


def domain_supcon(
    z1: torch.Tensor, z2: torch.Tensor, is_ood: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Domain SupCon over B images: (mean, per-image ½(L_sup(n) + L_sup(n+B)) of shape [B]), float32.

    For anchor a with domain y_a, the positives are P_a = {j ≠ a : y_j = y_a} over both views (a⁺ included) and
    L_sup(a) = (1/|P_a|) Σ_{j∈P_a} −log(exp(s_aj/τ)/Dₐ), with the NT-Xent denominator Dₐ (self excluded).
    `is_ood` is a bool [B]. A batch without any OOD item gives exact zeros (the term is inactive).
    """
    b = z1.shape[0]
    if is_ood.shape != (b,):
        raise ValueError(f"is_ood must have shape ({b},), got {tuple(is_ood.shape)}")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    is_ood = is_ood.to(device=z1.device, dtype=torch.bool)
    if not bool(is_ood.any()):
        per_sample = torch.zeros(b, dtype=torch.float32, device=z1.device)
        return per_sample.mean() if b else per_sample.sum(), per_sample
    with torch.autocast(device_type=z1.device.type, enabled=False):
        logits = similarity_logits(z1.float(), z2.float(), temperature)
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        domain = torch.cat([is_ood, is_ood])
        eye = torch.eye(2 * b, dtype=torch.bool, device=z1.device)
        positive = (domain[:, None] == domain[None, :]) & ~eye
        positive_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
        anchor = -positive_log_prob / positive.sum(dim=1).float()
        per_sample = per_image(anchor)
        return per_sample.mean(), per_sample
