r"""Guards against mutations that the other tests let through.

A mutation audit changed the package's linear algebra and adapters one small,
realistic mistake at a time (a wrong head mapping, a lost mask, a sign, a
tolerance...) and ran the tests. Each test here kills at least one mutant
that survived them; the mutant is named in the test's comment. They compare
the package with computations that do not share its code: attention and
value vectors read from the model's own outputs and hooks of our own
(``effattn_testing.reference_layer``), ranks from numpy, certificates
recomputed from the matrices. The guards of the solver and of the
attribution classes sit with their modules' tests, under "guards from the
mutation audit" in ``test_solver.py``, ``test_solver_perf_paths.py`` and
``tests/attr/test_attribution.py``.

Several earlier checks compared two outputs of the package with each other,
e.g. a model-level swap through ``replace_attention``, which uses the same
``expand_kv`` and output weights as the capture: a grouped-query mistake made
both sides wrong in the same way.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from effattn_testing import (
    attention_modules,
    head_values,
    random_batch,
    reference_layer,
)

from captum_effattn import (
    attention_support_test,
    attention_weights,
    effective_attention,
    efficient_attention,
)
from captum_effattn._core.adapters import ModelAdapter
from captum_effattn._core.functional import solve_layer

# nn.Linear, a fused Conv1D (GPT-2) and grouped-query attention (Llama)
FAMILIES = ["bert", "distilbert", "gpt2", "llama"]
DECODERS = ("gpt2", "llama")


# ------------------------------------------------------------ adapters
@pytest.mark.parametrize(
    "family, overrides",
    [(f, {}) for f in FAMILIES] + [("llama", {"head_dim": 16})],
    ids=FAMILIES + ["llama-head_dim-16"],
)
def test_output_equivalence_against_an_independent_t(tiny_model, family, overrides):
    # Mutants: expand_kv mapping query head h to value head h % kv instead of
    # h // (H / kv); head_dim read from the wrong dimension of W_O (only
    # differs when heads * head_dim != hidden size, as in Mistral-Nemo).
    model = tiny_model(family, **overrides)
    ids, mask = random_batch(2, 22, lengths=[22, 15], seed=0)
    real = mask.bool()
    e = efficient_attention(model, ids, mask)
    eff = effective_attention(model, ids, mask)
    for layer in range(e.shape[0]):
        a, t = reference_layer(model, family, ids, mask, layer)
        a = a / a.sum(-1, keepdim=True)
        scale = (a @ t).norm(dim=-1).transpose(1, 2)[real]  # (rows, heads)
        for m in (e[layer], eff[layer]):
            diff = ((m - a) @ t).norm(dim=-1).transpose(1, 2)[real]
            assert float((diff / scale).max()) < 1e-5  # float32 forward passes
        assert float((e[layer] - a).abs().max()) > 1e-2  # not vacuous


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("partial", [False, True], ids=["all-rows", "query-mask"])
def test_replace_attention_against_a_direct_computation(tiny_model, family, partial):
    # Mutants in replace_attention: the sign of its correction, heads and
    # positions mixed up in the reshape, query_mask ignored, the expand_kv
    # mistake above, a transposed or wrongly sliced W_O (projected families).
    # Swapping in efficient attention cannot see these (its correction is 0);
    # an arbitrary matrix M does.
    model = tiny_model(family)
    ids, mask = random_batch(2, 22, lengths=[22, 15], seed=1)
    layer = 1
    att, value, proj = attention_modules(model, family, layer)
    b, n = ids.shape
    g = torch.Generator().manual_seed(0)
    heads = ModelAdapter(model).num_heads
    keys = mask.bool()[:, None, None, :].expand(b, heads, n, n)
    if family in DECODERS:
        keys = keys & torch.ones(n, n, dtype=torch.bool).tril()
    logits = torch.randn(b, heads, n, n, generator=g).masked_fill(~keys, -torch.inf)
    m = torch.nan_to_num(torch.softmax(logits, -1))  # rows of padded queries: 0
    qmask = torch.rand(b, n, generator=g) > 0.5 if partial else None
    got = {}
    with torch.no_grad(), ModelAdapter(model).replace_attention({layer: m}, qmask):
        # registered after the replacement's hooks, so they see what it returns
        handles = [
            value.register_forward_hook(lambda mod, i, o: got.update(v=o)),
            att.register_forward_hook(lambda mod, i, o: got.update(out=o)),
        ]
        try:
            model(input_ids=ids, attention_mask=mask)
        finally:
            for h in handles:
                h.remove()
    a = got["out"][1]  # the model's own attention, left in the output
    used = m if qmask is None else torch.where(qmask[:, None, :, None], m, a)
    v = head_values(model, family, got["v"])
    context = (used @ v).transpose(1, 2).reshape(b, n, -1)  # heads in order
    with torch.no_grad():
        expected = context if family == "bert" else proj(context)
    torch.testing.assert_close(got["out"][0], expected, atol=1e-5, rtol=1e-5)
    assert float((m - a).abs().max()) > 0.1


# ---------------------------------------------------------- certificate
def test_ranks_in_the_certificate_are_numpys(tiny_model):
    # Mutant: effective attention's rank counted the ones column (rank([T, 1])
    # instead of rank(T)).
    model = tiny_model("bert")
    ids, mask = random_batch(1, 30, seed=2)
    _, cert_eff = effective_attention(model, ids, mask, return_certificate=True)
    _, cert_e = efficient_attention(model, ids, mask, return_certificate=True)
    for layer in range(2):
        _, t = reference_layer(model, "bert", ids, mask, layer)
        for h in range(t.shape[1]):
            th = t[0, h].numpy()
            with_ones = np.hstack([th, np.ones((th.shape[0], 1))])
            assert int(cert_eff.rank[layer, 0, h]) == np.linalg.matrix_rank(th)
            assert int(cert_e.rank[layer, 0, h]) == np.linalg.matrix_rank(with_ones)


def _layer_problem(seed: int, temp: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    b, h, n, dh = 2, 3, 24, 4
    key_mask = torch.ones(b, n, dtype=torch.bool)
    key_mask[1, n - 6 :] = False
    logits = torch.randn(b, h, n, n, generator=g, dtype=torch.float64) * temp
    probs = torch.softmax(logits.masked_fill(~key_mask[:, None, None], -torch.inf), -1)
    values = torch.randn(b, h, n, dh, generator=g, dtype=torch.float64)
    w_out = torch.randn(h, dh, 10, generator=g, dtype=torch.float64)
    rows = torch.arange(n).expand(b, n)
    return probs, values, w_out, key_mask, rows


@pytest.mark.parametrize(
    "kind, options",
    [("efficient", dict(max_iter=1, tol=0.0)), ("effective", {})],
    ids=["efficient-unconverged", "effective"],
)
def test_certificate_fields_recomputed(kind, options):
    # Mutants: the output residual measured without W_O (on V alone); the
    # row-sum error signed, so rows summing to less than 1 went unseen.
    probs, values, w_out, key_mask, rows = _layer_problem(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # unconverged on purpose
        out, cert = solve_layer(kind, probs, values, w_out, key_mask, rows, **options)
    t = values @ w_out[None]
    close = dict(rtol=1e-9, atol=1e-15)
    for i in range(2):
        n = int(key_mask[i].sum())
        for h in range(3):
            m, a, th = out[i, h, :n, :n], probs[i, h, :n, :n], t[i, h, :n]
            rel = ((m - a) @ th).norm(dim=-1) / (a @ th).norm(dim=-1)
            sums = (m.sum(-1) - 1).abs()
            torch.testing.assert_close(cert.output_residual[i, h], rel.max(), **close)
            torch.testing.assert_close(cert.row_sum_error[i, h], sums.max(), **close)
            torch.testing.assert_close(cert.min_entry[i, h], m.min(), **close)
    if kind == "efficient":  # the rows really are unfinished
        assert float(cert.output_residual.max()) > 1e-3


def test_default_tolerance_certifies_to_1e_12():
    # Mutant: the float64 default tolerance 100 times looser (1e-10). Peaked
    # rows are degenerate vertices whose polish lands between 1e-12 and 1e-10
    # before it lands below; the documented default certifies to 1e-12.
    probs, values, w_out, key_mask, rows = _layer_problem(3, temp=25.0)
    _, cert = solve_layer("efficient", probs, values, w_out, key_mask, rows)
    assert bool(cert.converged.all())
    assert float(cert.kkt_residual.max()) <= 1e-12


def test_converged_flag_is_the_tolerance():
    # Mutant: converged = kkt <= 100 tol. Float32 algebra cannot reach 1e-9:
    # its KKT residuals stay near float32 rounding, and the certificate must
    # say that the tolerance was not met.
    probs, values, w_out, key_mask, rows = _layer_problem(4, temp=6.0)
    tol = 1e-9
    with pytest.warns(RuntimeWarning, match="did not reach the tolerance tol=1e-09"):
        _, cert = solve_layer(
            "efficient", probs, values, w_out, key_mask, rows,
            dtype=torch.float32, tol=tol,
        )  # fmt: skip
    assert torch.equal(cert.converged, cert.kkt_residual <= tol)
    near = (cert.kkt_residual > tol) & (cert.kkt_residual <= 100 * tol)
    assert bool(near.any())  # heads the mutant would call converged


def test_negative_rows_count_from_the_end(tiny_model):
    # Mutant: negative row positions clamped to 0 instead of counted from the
    # end of the (padded) sequence, as resolve_rows documents.
    model = tiny_model("bert")
    ids, mask = random_batch(2, 26, seed=3)
    last = efficient_attention(model, ids, mask, layers=-1, rows=[-1, -3])
    ref = efficient_attention(model, ids, mask, layers=-1, rows=[25, 23])
    torch.testing.assert_close(last, ref, atol=0, rtol=0)


# ------------------------------------------------ attention_support_test
def _restrict(a, keep):
    # the raw rows restricted to ``keep`` and renormalised; a row with
    # nothing kept stays as it was
    kept = a * keep
    total = kept.sum(-1, keepdim=True)
    return torch.where(total > 0, kept / torch.where(total > 0, total, 1.0), a)


def test_support_test_against_a_direct_restriction(tiny_model):
    # Mutants: empty restricted rows set to 0 instead of kept; the sign of
    # necessity (also: the support fraction over the padded length, and
    # target=None read as the least likely class).
    model = copy.deepcopy(tiny_model("bert", seed=1))
    with torch.no_grad():  # probabilities away from 1/2, so that changes show
        model.classifier.weight.mul_(100.0)
    # the second example is shorter than d_h + 2: there E = A, and the
    # complement of the support is empty
    ids, mask = random_batch(3, 26, lengths=[26, 6, 18], seed=5)
    res = attention_support_test(model, ids, mask)
    e = efficient_attention(model, ids, mask)
    raw = attention_weights(model, ids, mask)
    real = mask.bool()
    keys = real[None, :, None, None, :]
    support = e > 0
    adapter = ModelAdapter(model)

    def probs(mats=None):
        with torch.no_grad():
            if mats is None:
                out = model(input_ids=ids, attention_mask=mask)
            else:
                with adapter.replace_attention(dict(enumerate(mats)), real):
                    out = model(input_ids=ids, attention_mask=mask)
        return torch.softmax(out.logits.double(), -1)

    p0 = probs()
    target = p0.argmax(-1)
    batch = torch.arange(3)
    p_full = p0[batch, target]
    p_sup = probs(_restrict(raw, support))[batch, target]
    p_comp = probs(_restrict(raw, ~support & keys))[batch, target]
    assert torch.equal(res.target, target)
    torch.testing.assert_close(res.p_full, p_full)
    torch.testing.assert_close(res.p_support, p_sup)
    torch.testing.assert_close(res.p_complement, p_comp)
    torch.testing.assert_close(res.sufficiency, p_full - p_sup)
    torch.testing.assert_close(res.necessity, p_full - p_comp)
    assert float((p_comp - p_full).abs().max()) > 1e-4  # the restriction acts
    # share of the real keys in the support, over layers, heads, real rows
    frac = (support & keys).sum(-1) / real.sum(1)[None, :, None, None]
    count = real.sum(1) * e.shape[0] * e.shape[2]
    frac = (frac * real[None, :, None, :]).sum((0, 2, 3)) / count
    torch.testing.assert_close(res.support_fraction, frac.double())
