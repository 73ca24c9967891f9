r"""The solver and the attribution classes on CUDA give the CPU's answers.

Marked ``gpu``: skipped without CUDA (see ``tests/conftest.py``). Every test
takes the device from the ``device`` fixture, so the same checks can be run
on CPU by hand (``test_x(torch.device("cpu"), ...)``)."""

from __future__ import annotations

import pytest
import torch
from effattn_testing import on_cpu_and_device, random_batch

from captum_effattn import (
    EfficientAttention,
    effective_attention,
    efficient_attention,
)
from captum_effattn._core.solver import head_bases, min_norm_simplex_solve

pytestmark = pytest.mark.gpu


@pytest.fixture
def device(gpu_device) -> torch.device:
    return gpu_device


def _problem(groups: int, n: int, dh: int, rows: int, seed: int, temp: float):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(groups, n, dh, generator=g, dtype=torch.float64)
    w = torch.randn(groups, dh, 3 * dh, generator=g, dtype=torch.float64)
    mask = torch.ones(groups, n, dtype=torch.bool)
    mask[1:, n - 5 :] = False  # padding in all but the first basis
    logits = torch.randn(groups, rows, n, generator=g, dtype=torch.float64) * temp
    a = torch.softmax(logits.masked_fill(~mask[:, None], -torch.inf), -1)
    return v, w, mask, a


@pytest.mark.parametrize("temp", [3.0, 20.0])
def test_solver_matches_cpu(device, temp):
    v, w, mask, a = _problem(4, 80, 8, 24, seed=1, temp=temp)
    _, c, cm = head_bases(v, w, mask)
    x, lam, info = min_norm_simplex_solve(c, a @ c, cm, max_iter=100)
    _, cg, cmg = head_bases(v.to(device), w.to(device), mask.to(device))
    torch.testing.assert_close(cg.cpu() @ cg.cpu().mT, c @ c.mT, atol=1e-10, rtol=0)
    xg, lamg, infog = min_norm_simplex_solve(cg, a.to(device) @ cg, cmg, max_iter=100)
    assert xg.device.type == device.type
    assert bool(info.converged.all()) and bool(infog.converged.all())
    assert float(infog.kkt_residual.max()) <= 1e-12
    torch.testing.assert_close(xg.cpu(), x, atol=1e-9, rtol=0)
    assert float(xg[1:, :, -5:].abs().max()) == 0.0  # padding stays exactly 0


@pytest.mark.parametrize("kind", ["efficient", "effective"])
def test_causal_row_chunks_match_cpu(device, tiny_model, kind, monkeypatch):
    # a decoder's rows in chunks of a small budget (as long inputs take
    # them) on the device give the CPU's one solve of all rows
    from captum_effattn._core import functional

    model = tiny_model("gpt2")
    ids, mask = random_batch(2, 30, lengths=[30, 21], seed=4)
    fn = efficient_attention if kind == "efficient" else effective_attention
    want = fn(model, ids, mask)
    monkeypatch.setattr(functional, "_default_chunk_bytes", lambda d: 2**16)
    cpu, got = on_cpu_and_device(lambda *t: fn(model, *t), model, device, ids, mask)
    assert got.device.type == device.type
    torch.testing.assert_close(cpu, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(got.cpu(), want, atol=1e-9, rtol=0)


def test_solver_float32_iterations_and_float32_input(device):
    v, w, mask, a = _problem(3, 64, 8, 16, seed=2, temp=5.0)
    _, c, cm = head_bases(v.to(device), w.to(device), mask.to(device))
    b = a.to(device) @ c
    x32, _, i32 = min_norm_simplex_solve(c, b, cm)
    x64, _, i64 = min_norm_simplex_solve(c, b, cm, work_dtype=torch.float64)
    assert bool(i32.converged.all()) and bool(i64.converged.all())
    torch.testing.assert_close(x32, x64, atol=1e-10, rtol=0)
    xf, _, inf = min_norm_simplex_solve(c.float(), b.float(), cm, tol=1e-6)
    assert xf.dtype == torch.float32 and bool(inf.converged.all())
    torch.testing.assert_close(xf.double(), x64, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_efficient_attention_matches_cpu(device, tiny_model, family):
    model = tiny_model(family)
    ids, mask = random_batch(3, 30, lengths=[30, 22, 26], seed=3)
    e_cpu, cert_cpu = efficient_attention(model, ids, mask, return_certificate=True)
    model.to(device)
    try:
        e_gpu, cert_gpu = efficient_attention(
            model, ids.to(device), mask.to(device), return_certificate=True
        )
    finally:
        model.to("cpu")
    assert e_gpu.device.type == device.type
    assert cert_gpu.ok(rtol=1e-6), str(cert_gpu)
    # float32 model arithmetic differs between devices at ~1e-6; the
    # matrices inherit that, not more
    torch.testing.assert_close(e_gpu.cpu(), e_cpu, atol=1e-4, rtol=0)
    real = mask.bool()
    assert float(e_gpu.permute(1, 3, 0, 2, 4)[~real.to(device)].abs().max()) == 0.0


def test_attribute_matches_cpu(device, tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 28, lengths=[28, 20], seed=4)

    def forward(i, m):
        return model(input_ids=i, attention_mask=m).logits

    explainer = EfficientAttention(forward, model=model)
    s_cpu, r_cpu = explainer.attribute(
        ids, additional_forward_args=(mask,), return_matrices=True
    )
    model.to(device)
    try:
        s_gpu, r_gpu = explainer.attribute(
            ids.to(device), additional_forward_args=(mask.to(device),),
            return_matrices=True,
        )  # fmt: skip
    finally:
        model.to("cpu")
    assert s_gpu.device.type == device.type
    assert r_gpu.certificate.ok(rtol=1e-6)
    torch.testing.assert_close(s_gpu.cpu(), s_cpu, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_real_minilm_document_on_gpu(device, minilm, real_batch):
    model, _ = minilm
    ids, mask = real_batch
    ids, mask = ids[:1], mask[:1]
    e_cpu = efficient_attention(model, ids, mask, layers=[0, -1])
    model.to(device)
    try:
        e_gpu, cert = efficient_attention(
            model, ids.to(device), mask.to(device), layers=[0, -1],
            return_certificate=True,
        )  # fmt: skip
    finally:
        model.to("cpu")
    assert cert.ok(rtol=1e-6), str(cert)
    torch.testing.assert_close(e_gpu.cpu(), e_cpu, atol=1e-4, rtol=0)


# ------------------------------------------------ the rest of the product
# Each check below runs one public entry point on the device and on the CPU
# and asks for the CPU's answer (to the float32 model's rounding, ~1e-6).


def _forward(model):
    def forward(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits

    return forward


def test_float32_algebra_certifies(device, tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 40, lengths=[40, 31], seed=5)
    e64 = efficient_attention(model, ids, mask)
    _, (e32, cert) = on_cpu_and_device(
        lambda i, m: efficient_attention(
            model, i, m, dtype=torch.float32, return_certificate=True
        ),
        model, device, ids, mask,
    )  # fmt: skip
    assert e32.dtype == torch.float32 and e32.device.type == device.type
    assert cert.ok(), str(cert)
    torch.testing.assert_close(e32.cpu().double(), e64, atol=1e-3, rtol=0)


def test_sparse_objective_and_effective_attention(device, tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 30, lengths=[30, 24], seed=6)

    def both(i, m):
        sparse = efficient_attention(
            model, i, m, objective="sparse", layers=0, return_certificate=True
        )
        return sparse, effective_attention(model, i, m)

    ((sparse_cpu, _), eff_cpu), ((sparse, cert), eff) = on_cpu_and_device(
        both, model, device, ids, mask
    )
    assert cert.ok(rtol=1e-6), str(cert)
    # the sparse vertex can differ where several vertices tie; its row sums,
    # support sizes and output equivalence (the certificate) must not
    torch.testing.assert_close(sparse.sum(-1).cpu(), sparse_cpu.sum(-1))
    assert bool((sparse.cpu() > 0).sum(-1).le(sparse_cpu.gt(0).sum(-1) + 2).all())
    torch.testing.assert_close(eff.cpu(), eff_cpu, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "cls, options",
    [
        ("EfficientAttention", dict(layer=0, query="all", weighting="gradient")),
        ("EfficientAttention", dict(layer="gradient_rollout")),
        ("EfficientAttention", dict(layer="mean", heads=[0, 2])),
        ("AttentionRollout", dict()),
        ("EffectiveAttention", dict(layer=-1)),
    ],
)
def test_attribution_modes_match_cpu(device, tiny_model, cls, options):
    import captum_effattn

    model = tiny_model("bert")
    ids, mask = random_batch(3, 26, lengths=[26, 19, 23], seed=7)
    explainer = getattr(captum_effattn, cls)(_forward(model), model=model)
    cpu, dev = on_cpu_and_device(
        lambda i, m: explainer.attribute(
            i, target=1, additional_forward_args=(m,), **options
        ),
        model, device, ids, mask,
    )  # fmt: skip
    assert dev.device.type == device.type and dev.shape == cpu.shape
    scale = float(cpu.abs().max())
    torch.testing.assert_close(dev.cpu(), cpu, atol=1e-4 * max(scale, 1.0), rtol=0)


def test_support_test_with_the_algebra_on_the_cpu(device, tiny_model):
    # device="cpu" for a model on the GPU: the replacing hook mixed the CPU
    # matrices with the model's attention ("not on the expected device"),
    # and ids given on the CPU reached the GPU model as they were
    from captum_effattn import attention_support_test

    model = tiny_model("bert")
    ids, mask = random_batch(2, 30, lengths=[30, 25], seed=8)
    cpu = attention_support_test(model, ids, mask, target=1)
    model.to(device)
    try:
        mixed = attention_support_test(model, ids, mask, target=1, device="cpu")
    finally:
        model.to("cpu")
    assert mixed.certificate.ok(rtol=1e-6), str(mixed.certificate)
    for name in ("sufficiency", "necessity"):
        torch.testing.assert_close(
            getattr(mixed, name).cpu(), getattr(cpu, name), atol=1e-4, rtol=0
        )


def test_support_test_matches_cpu(device, tiny_model):
    from captum_effattn import attention_support_test

    model = tiny_model("bert")
    ids, mask = random_batch(2, 30, lengths=[30, 25], seed=8)
    cpu, dev = on_cpu_and_device(
        lambda i, m: attention_support_test(model, i, m, target=1),
        model, device, ids, mask,
    )  # fmt: skip
    assert dev.certificate.ok(rtol=1e-6), str(dev.certificate)
    for name in ("p_full", "p_efficient", "sufficiency", "necessity"):
        torch.testing.assert_close(
            getattr(dev, name).cpu(), getattr(cpu, name), atol=1e-4, rtol=0
        )
