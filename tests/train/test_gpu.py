"""The GPU path of the single-process loop: device placement, bf16 autocast, channels_last, probes on the device,
and a checkpoint written on the GPU that resumes and evaluates on the CPU. Skipped where no CUDA device exists (CI);
run on a GPU machine with `pytest tests/train/test_gpu.py`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ltray.config import Config, load_config
from ltray.data.loading import load_run_data
from ltray.evaluate import evaluate_backbone, model_from_checkpoint
from ltray.train.loop import Pretrainer, pretrain

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _config(tmp_path: Path, method: str, **extra: object) -> Config:
    return load_config(None, {
        "data.dataset": "digits-lt", "method.name": method, "model.width": 0.125, "optim.batch_size": 64,
        "optim.epochs": 2, "optim.warmup_epochs": 0, "optim.lr": 0.5, "method.colt.warmup": 1,
        "method.colt.interval": 1, "method.colt.budget": 64, "method.colt.pool_size": 300,
        "eval.protocol": "gh_adam", "eval.probe_epochs_scale": 0.02, "eval.kshot": 5, "eval.kshot_draws": 1,
        "run.progress": "off", "run.output_dir": str(tmp_path / "runs"), "run.name": method.replace("+", "_"),
        **extra,
    })


@pytest.mark.parametrize("method", ["simclr", "sdclr+gh", "bcl", "colt"])
def test_bf16_channels_last_run_on_gpu_then_probe(method: str, tmp_path: Path) -> None:
    cfg = _config(tmp_path, method, **{"run.device": "cuda", "run.amp": "bf16", "model.channels_last": True})
    data = load_run_data(cfg)
    result = pretrain(cfg, data=data)
    assert all(math.isfinite(h["loss"]) for h in result.history)
    device = torch.device("cuda")
    model = model_from_checkpoint(cfg, result.checkpoint, device)
    assert all(p.device.type == "cuda" for p in model.parameters())
    report = evaluate_backbone(cfg, model.backbone, data, device)
    assert 0.0 <= report["figures"]["full_all"] <= 100.0


def test_gpu_float32_step_matches_cpu(tmp_path: Path) -> None:
    """Same seed, same batch: the first step's loss on the GPU (float32, no autocast) equals the CPU one, so views,
    model and loss are placed and computed alike on both devices."""
    losses = {}
    for device in ("cpu", "cuda"):
        cfg = _config(tmp_path / device, "simclr", **{"run.device": device, "run.amp": "off"})
        trainer = Pretrainer(cfg)
        index = trainer._batches()[0]
        losses[device] = trainer.train_step(index)["loss"]
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=2e-3)


def test_gpu_checkpoint_resumes_on_cpu(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "simclr", **{"run.device": "cuda", "run.amp": "bf16"})
    result = pretrain(cfg)
    cpu_cfg = cfg.replace({"run.device": "cpu", "optim.epochs": 3})
    trainer = Pretrainer(cpu_cfg)
    trainer.resume_from(result.checkpoint)
    assert trainer.epoch == 2
    trainer.run()
    assert trainer.epoch == 3 and math.isfinite(trainer.history[-1]["loss"])


def test_sinkhorn_cuda_graph_equals_the_eager_loop() -> None:
    from ltray.losses.sinkhorn import _iterate, sinkhorn_knopp

    torch.manual_seed(0)
    for prior in (None, torch.tensor([0.0, 0.5, 0.25, 0.25], dtype=torch.float64)):
        for batch in (64, 48):  # two shapes: two graphs
            t = torch.rand(batch, 4, device="cuda") * 2 - 1
            q = sinkhorn_knopp(t, prior, iterations=50)
            q_again = sinkhorn_knopp(t.flip(0), prior, iterations=50).flip(0)  # replay with new inputs
            a = torch.full((4,), 0.25, device="cuda") if prior is None else (prior / prior.sum()).float().cuda()
            b = torch.full((batch,), 1.0 / batch, device="cuda")
            e = torch.exp(t / 0.05).t()
            r, c = _iterate(e, a, b, 50)
            expected = batch * (r[:, None] * e * c[None, :]).t()
            torch.testing.assert_close(q, expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(q_again, expected, rtol=1e-5, atol=1e-6)
