"""Mixed-precision training (AMP): on CUDA the loop autocasts and scales the loss; a few real steps."""

from __future__ import annotations

import pytest
import torch

from dd_core.data.coco import load_coco
from dd_core.data.dataset import CocoDataset
from dd_core.models import ModelConfig, build_model
from dd_core.train import TrainConfig, train
from dd_core.train.detector import spec_for, training_transforms
from dd_core.train.loop import Runtime, TrainHooks

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="AMP runs only on CUDA (dd_core.train.loop turns it on for a CUDA device): no CUDA device here",
)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_amp_steps_are_finite_change_the_weights_and_run_in_the_autocast_dtype(tiny_coco, dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    coco = load_coco(*tiny_coco)
    torch.manual_seed(0)
    model = build_model(spec_for("keypoints", coco, ModelConfig(test_size=64, min_size=(56, 64), max_size=96)))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    conv_dtypes: set[torch.dtype] = set()
    handle = model.backbone.body.conv1.register_forward_hook(lambda m, args, out: conv_dtypes.add(out.dtype))
    steps: list[int] = []
    # The loop's autocast takes the device's default autocast dtype (float16 on CUDA): choose it here.
    default = torch.get_autocast_dtype("cuda")
    torch.set_autocast_dtype("cuda", dtype)
    try:
        result = train(model, CocoDataset(coco, training_transforms(coco)),
                       # 8 steps: float16's loss scaler skips the first steps whose gradients overflow.
                       TrainConfig(iterations=8, batch_size=2, lr=0.005, warmup_iters=1, checkpoint_every=8),
                       runtime=Runtime(device="cuda", progress=False),
                       hooks=TrainHooks(on_step=lambda i, m, t: steps.append(i)))
    finally:
        torch.set_autocast_dtype("cuda", default)
        handle.remove()
    assert result.iteration == 8 and steps == list(range(1, 9))
    assert result.last_losses and all(torch.isfinite(torch.tensor(v)) for v in result.last_losses.values())
    assert conv_dtypes == {dtype}  # the convolutions ran in the AMP dtype
    after = model.state_dict()
    changed = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k].cpu())]
    assert "backbone.body.conv1.weight" in changed and "roi_heads.keypoint_predictor.kps_score_lowres.weight" in changed
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
