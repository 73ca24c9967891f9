r"""The faithfulness metrics and the token perturbations on CUDA give the
CPU's answers (marked ``gpu``: skipped without CUDA; run them on the CPU with
``CAPTUM_EFFATTN_GPU_TESTS_DEVICE=cpu``, see ``tests/conftest.py``)."""

from __future__ import annotations

import pytest
import torch
from captum.metrics import infidelity
from effattn_testing import on_cpu_and_device, random_batch

from captum_effattn.metrics import (
    aopc_necessity,
    minimal_necessary_size,
    necessity,
    sufficiency,
    token_perturb_func,
)

pytestmark = pytest.mark.gpu


def _setup(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(3, 24, lengths=[24, 18, 21], seed=11)
    special = torch.zeros_like(ids)
    special[:, 0] = 1
    # distinct scores, so that the ranking cannot depend on the device
    scores = torch.randperm(ids.numel(), generator=torch.Generator().manual_seed(0))
    return model, ids, mask, special, scores.view_as(ids).double()


def _forward(model):
    def forward(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits

    return forward


def test_erasure_metrics_match_cpu(gpu_device, tiny_model):
    model, ids, mask, special, scores = _setup(tiny_model)
    fwd = _forward(model)

    def all_metrics(ids, mask, special, scores):
        kw = dict(
            target=1, attention_mask=mask, special_tokens_mask=special,
        )  # fmt: skip
        return [
            sufficiency(fwd, ids, scores, **kw),
            necessity(fwd, ids, scores, **kw),
            necessity(fwd, ids, scores, mode="mask", mask_token_id=4, **kw),
            aopc_necessity(fwd, ids, scores, **kw).aopc,
            minimal_necessary_size(fwd, ids, scores, **kw)[0].double(),
        ]

    cpu, dev = on_cpu_and_device(
        all_metrics, model, gpu_device, ids, mask, special, scores
    )
    for c, d in zip(cpu, dev):
        assert d.device.type == gpu_device.type
        torch.testing.assert_close(
            d.cpu().double(), c.double(), atol=1e-5, rtol=0, equal_nan=True
        )


def test_token_perturbations_with_infidelity(gpu_device, tiny_model):
    model, ids, mask, special, scores = _setup(tiny_model)
    fwd = _forward(model)

    def run(ids, mask, special, scores):
        perturb = token_perturb_func(
            special_tokens_mask=special, attention_mask=mask, mask_token_id=4, seed=0
        )
        return infidelity(
            fwd, perturb, ids, scores.float(), additional_forward_args=(mask,),
            target=1, n_perturb_samples=4, max_examples_per_batch=6,
        )  # fmt: skip

    cpu, dev = on_cpu_and_device(run, model, gpu_device, ids, mask, special, scores)
    # the seeded generator draws on the CPU: the same perturbations on both
    assert dev.device.type == gpu_device.type
    torch.testing.assert_close(dev.cpu(), cpu, rtol=1e-4, atol=1e-6)
