r"""Every numeric claim of DESIGN.md section 2 on real model code: rows are
distributions, output equivalence (per head and on the logits), effective
attention = A P, equality for short inputs, padding invariance, and closeness
to effective attention; plus clear errors for bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from effattn_testing import make_tiny_model, random_batch

from captum_effattn import (
    attention_weights,
    effective_attention,
    efficient_attention,
)
from captum_effattn._core.adapters import ModelAdapter

ENCODERS = ["bert", "roberta", "distilbert"]


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("family", ENCODERS)
def test_distribution_and_output_equivalence(tiny_model, family):
    model = tiny_model(family)
    ids, mask = random_batch(3, 40, lengths=[40, 25, 33], seed=1)
    ids = ids + (mask == 0).long() * (1 if family == "roberta" else 0)
    e, cert = efficient_attention(model, ids, mask, return_certificate=True)
    a = attention_weights(model, ids, mask)
    real = mask.bool()
    # (layers, batch, heads, seq, seq), zero at padding
    assert e.shape == (2, 3, 4, 40, 40)
    by_query = e.permute(1, 3, 0, 2, 4)  # (batch, query, layer, head, key)
    by_key = e.permute(1, 4, 0, 2, 3)
    assert float(by_query[~real].abs().max()) == 0.0  # padded query rows
    assert float(by_key[~real].abs().max()) == 0.0  # padded keys
    rows = by_query[real]
    assert float(rows.min()) >= 0.0
    assert torch.allclose(rows.sum(-1), torch.ones_like(rows.sum(-1)), atol=1e-6)
    assert cert.ok(rtol=1e-6)
    assert float(cert.output_residual.max()) <= 1e-6
    # The claim is not vacuous: n > d_h + 1, so efficient differs from raw.
    assert float((e - a).abs().max()) > 1e-2
    # Model-level output equivalence: replace A by E in every head of every
    # layer; the logits and last hidden states stay the same.
    adapter = ModelAdapter(model)
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    with torch.no_grad(), adapter.replace_attention({i: e[i] for i in range(2)}):
        swapped = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    with (
        torch.no_grad(),
        adapter.replace_attention({i: torch.roll(a[i], 1, dims=-1) for i in range(2)}),
    ):
        other = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    h0, h1, h2 = (o.hidden_states[-1][real] for o in (base, swapped, other))
    assert torch.allclose(h0, h1, atol=1e-4)
    assert float((h0 - h2).abs().max()) > 1e-2  # the replacement does act
    assert torch.allclose(base.logits, swapped.logits, atol=1e-5)


def _independent_t(model, ids, mask, layer):
    adapter = ModelAdapter(model)
    with adapter.capture([layer]) as rec, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    v = rec.layers[layer]["values"][0].double()  # (heads, n, d_h)
    w = adapter.output_weights(layer).detach().double()  # (heads, d_h, d)
    return (v @ w).numpy()


def test_effective_equals_a_times_projector(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(1, 30, seed=2)
    a = attention_weights(model, ids, mask, layers=1)[0, 0].numpy()
    eff = effective_attention(model, ids, mask, layers=1)[0, 0].numpy()
    t = _independent_t(model, ids, mask, 1)
    for h in range(t.shape[0]):
        u, s, _ = np.linalg.svd(t[h], full_matrices=False)
        k = int((s > s[0] * 1e-10).sum())
        p = u[:, :k] @ u[:, :k].T
        np.testing.assert_allclose(eff[h], a[h] @ p, atol=1e-10)
    # output-equivalent but not a distribution
    assert np.abs(eff.sum(-1) - 1).max() > 1e-3 or eff.min() < -1e-6


def test_rank_tolerance_of_a_rank_deficient_value_map():
    # The default rank follows the float64 algebra, so the float32 rounding
    # of a value map of rank 2 counts as rank (as mathematics.rst says);
    # rtol=1e-5 discards it and gives Brunner's projector of the exact rank.
    model = make_tiny_model("bert", seed=0)
    value = model.bert.encoder.layer[0].attention.self.value
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        value.bias.zero_()
        for h in range(4):  # 4 heads of 8: each head's rows span 2 of them
            block = value.weight[h * 8 : (h + 1) * 8]
            block.copy_(torch.randn(8, 2, generator=g) @ block[:2])
    ids, mask = random_batch(1, 20, seed=5)
    a = attention_weights(model, ids, mask, layers=0)[0, 0].numpy()
    t = _independent_t(model, ids, mask, 0)
    _, noisy = effective_attention(model, ids, mask, layers=0, return_certificate=True)
    assert int(noisy.rank.max()) > 2
    eff, cert = effective_attention(
        model, ids, mask, layers=0, rtol=1e-5, return_certificate=True
    )
    # output-equivalent up to the float32 rounding it discards
    assert cert.rank.flatten().tolist() == [2] * 4
    assert float(cert.output_residual.max()) < 1e-6
    _, cert = efficient_attention(
        model, ids, mask, layers=0, rtol=1e-5, return_certificate=True
    )
    assert cert.rank.flatten().tolist() == [3] * 4 and cert.ok()
    for h in range(4):
        u = np.linalg.svd(t[h], full_matrices=False)[0][:, :2]
        np.testing.assert_allclose(eff[0, 0, h].numpy(), a[h] @ u @ u.T, atol=1e-10)


def test_efficient_is_closest_distribution_to_effective(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(1, 36, seed=3)
    kw = dict(layers=0)
    e = efficient_attention(model, ids, mask, **kw)[0, 0]
    eff = effective_attention(model, ids, mask, **kw)[0, 0]
    a = attention_weights(model, ids, mask, **kw)[0, 0]
    a = a / a.sum(-1, keepdim=True)
    # Pythagoras: ‖x‖² = ‖A_eff‖² + ‖x − A_eff‖² for output-equivalent x
    for x in (e, a):
        lhs = (x * x).sum(-1)
        rhs = (eff * eff).sum(-1) + ((x - eff) ** 2).sum(-1)
        assert torch.allclose(lhs, rhs, atol=1e-6)
    # and E beats every other output-equivalent distribution on the segment
    d_e = ((e - eff) ** 2).sum(-1)
    for t in (0.1, 0.5, 0.9):
        x = (1 - t) * e + t * a
        assert bool((((x - eff) ** 2).sum(-1) >= d_e - 1e-12).all())


@pytest.mark.parametrize("family", ENCODERS)
def test_short_inputs_change_nothing(tiny_model, family):
    # head dim 8: for n <= d_h, rank([T, 1]) = n generically, so E = A_eff = A
    model = tiny_model(family)
    ids, mask = random_batch(2, 8, lengths=[8, 6], seed=4)
    ids = ids + (mask == 0).long() * (1 if family == "roberta" else 0)
    e = efficient_attention(model, ids, mask)
    eff = effective_attention(model, ids, mask)
    a = attention_weights(model, ids, mask)
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-300)
    assert torch.allclose(e, a, atol=1e-6)
    assert torch.allclose(eff, a, atol=1e-6)


@pytest.mark.parametrize("family", ENCODERS)
def test_padding_invariance(tiny_model, family):
    model = tiny_model(family)
    lengths = [30, 18, 24]
    ids, mask = random_batch(3, 30, lengths=lengths, seed=5)
    pad = 1 if family == "roberta" else 0
    ids = ids + (mask == 0).long() * pad
    batch, cert = efficient_attention(model, ids, mask, return_certificate=True)
    for i, n in enumerate(lengths):
        one, c1 = efficient_attention(
            model, ids[i : i + 1, :n], mask[i : i + 1, :n], return_certificate=True
        )
        assert torch.allclose(batch[:, i, :, :n, :n], one[:, 0], atol=1e-8)
        assert float(batch[:, i, :, n:].abs().sum()) == 0.0
        assert float(batch[:, i, :, :, n:].abs().sum()) == 0.0


def test_rows_and_layers_subset(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 30, lengths=[30, 20], seed=6)
    full = efficient_attention(model, ids, mask)
    part = efficient_attention(model, ids, mask, layers=[-1], rows=[0, 5])
    assert part.shape == (1, 2, 4, 2, 30)
    assert torch.allclose(part[0, :, :, 0], full[1, :, :, 0], atol=1e-8)
    assert torch.allclose(part[0, :, :, 1], full[1, :, :, 5], atol=1e-8)
    per_example = torch.tensor([[3], [19]])
    got = efficient_attention(model, ids, mask, layers=0, rows=per_example)
    assert torch.allclose(got[0, 0, :, 0], full[0, 0, :, 3], atol=1e-8)
    assert torch.allclose(got[0, 1, :, 0], full[0, 1, :, 19], atol=1e-8)


def test_progress_bar_over_layers(tiny_model, capsys):
    model = tiny_model("bert")
    ids, mask = random_batch(1, 30, seed=8)
    quiet = efficient_attention(model, ids, mask)
    assert "efficient attention" not in capsys.readouterr().err
    shown = efficient_attention(model, ids, mask, show_progress=True)
    err = capsys.readouterr().err
    assert "efficient attention" in err and "/2 [" in err  # the tiny BERT has 2 layers
    assert torch.equal(quiet, shown)


def test_float32_algebra(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(1, 30, seed=7)
    e32, cert = efficient_attention(
        model, ids, mask, dtype=torch.float32, tol=1e-6, return_certificate=True
    )
    e64 = efficient_attention(model, ids, mask)
    assert e32.dtype == torch.float32
    assert torch.allclose(e32.double(), e64, atol=1e-4)
    assert float(cert.output_residual.max()) < 1e-4


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda ids, m: (ids[:0], None), ValueError, "empty batch"),
        (lambda ids, m: (ids[:, :0], None), ValueError, "zero-length"),
        (lambda ids, m: (ids.float(), None), TypeError, "integer"),
        (lambda ids, m: (ids, m[:, :-1]), ValueError, "must match"),
        (lambda ids, m: (ids, m * torch.tensor([[0], [1]])), ValueError, "all padding"),
        (lambda ids, m: (ids - 500, None), ValueError, "negative"),
        (lambda ids, m: (ids + 1000, None), ValueError, "vocabulary"),
        (lambda ids, m: (ids[0], None), ValueError, "batch, seq"),
        (lambda ids, m: (ids.repeat(1, 20), None), ValueError, "positions"),
        (lambda ids, m: (ids.tolist(), None), TypeError, "torch.Tensor"),
    ],
)
def test_bad_input(tiny_model, make, error, match):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 12, seed=8)
    bad_ids, bad_mask = make(ids, mask)
    with pytest.raises(error, match=match):
        efficient_attention(model, bad_ids, bad_mask)


def test_sdpa_model_is_refused():
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16,
    )  # fmt: skip
    model = BertForSequenceClassification(cfg).eval()
    model.set_attn_implementation("sdpa")
    ids, mask = random_batch(1, 6, vocab=50)
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        efficient_attention(model, ids, mask)


def test_unsupported_architecture_lists_supported():
    from transformers import T5Config, T5EncoderModel

    model = T5EncoderModel(
        T5Config(vocab_size=50, d_model=16, num_layers=1, num_heads=2, d_ff=16)
    )
    with pytest.raises(ValueError, match="supported model types: .*bert"):
        efficient_attention(model, torch.ones(1, 4, dtype=torch.long))


def test_training_mode_restored_and_hooks_removed(tiny_model):
    model = tiny_model("bert", seed=11)
    model.train()
    ids, mask = random_batch(1, 12)
    try:
        with pytest.warns(UserWarning, match="training mode"):
            efficient_attention(model, ids, mask)
        assert model.training
        n_hooks = sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()
        )
        assert n_hooks == 0
        with pytest.raises(ValueError):
            efficient_attention(model, ids, mask, rows=[99])
        assert model.training
        assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    finally:
        model.eval()


# -------------------------------------------------------------- real model
@pytest.mark.slow
def test_real_minilm_document(minilm, real_batch):
    model, _ = minilm
    ids, mask = real_batch
    ids, mask = ids[:1], mask[:1]
    assert int(mask.sum()) >= 100
    e, cert = efficient_attention(model, ids, mask, return_certificate=True)
    assert cert.ok(rtol=1e-6), str(cert)
    assert float(e.min()) >= 0.0
    assert torch.allclose(e.sum(-1), torch.ones(1, dtype=e.dtype), atol=1e-6)
    a = attention_weights(model, ids, mask)
    assert float((e - a).abs().max()) > 0.1  # long input: they really differ
    adapter = ModelAdapter(model)
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask).logits
        with adapter.replace_attention({i: e[i] for i in range(e.shape[0])}):
            swapped = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(base, swapped, atol=1e-5)


def _layer_inputs(seed: int, b: int = 2, h: int = 3, n: int = 24, dh: int = 4):
    g = torch.Generator().manual_seed(seed)
    key_mask = torch.ones(b, n, dtype=torch.bool)
    key_mask[1, n - 6 :] = False
    logits = torch.randn(b, h, n, n, generator=g) * 3
    probs = torch.softmax(logits.masked_fill(~key_mask[:, None, None], -1e9), -1)
    values = torch.randn(b, h, n, dh, generator=g)
    w_out = torch.randn(h, dh, h * dh, generator=g)
    rows = torch.arange(n).expand(b, n)
    return probs, values, w_out, key_mask, rows


@pytest.mark.parametrize(
    "kind, objective",
    [
        ("efficient", "min_norm"),
        ("efficient", "sparse"),
        ("effective", "min_norm"),
        ("raw", "min_norm"),
    ],
)
@pytest.mark.parametrize("rows", ["all", "chosen"])
def test_causal_rows_in_chunks_equal_one_solve(kind, objective, rows, monkeypatch):
    # every row of a causal layer has a basis of its own; the rows of a long
    # input are solved in chunks that fit the memory budget, each on the
    # keys its rows need, which must give the rows and the certificate of
    # one solve of all of them (on all keys: the path that CUDA's joint
    # solve of the layers takes); raw attention needs no chunks
    from captum_effattn._core import functional
    from captum_effattn._core.functional import solve_layers

    layers = [_layer_inputs(seed) for seed in range(2)]
    if rows == "chosen":  # unsorted, different per example, padding too
        chosen = torch.tensor([[23, 3, 10, 7, 15], [0, 20, 5, 12, 21]])
        layers = [inputs[:4] + (chosen,) for inputs in layers]
    whole = solve_layers(kind, layers, causal=True, objective=objective, joint=True)
    per_row = 2 * 3 * 24 * 5 * 8 * functional.CAUSAL_COPIES
    monkeypatch.setattr(functional, "_default_chunk_bytes", lambda d: 2 * per_row)
    assert len(functional._causal_row_chunks(layers[0], torch.float64)) > 2
    chunked = solve_layers(kind, layers, causal=True, objective=objective)
    for (out, cert), (ref, ref_cert) in zip(chunked, whole):
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
        for f in dataclasses.fields(cert):
            got, want = getattr(cert, f.name), getattr(ref_cert, f.name)
            if want is None:
                assert got is None, f.name
            elif want.is_floating_point():
                torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
            else:
                assert torch.equal(got, want), f.name
    if kind == "efficient":
        assert bool((whole[0][1].iterations > 0).any())  # not all closed form
        # heads whose first rows converge and later ones do not
        with pytest.warns(RuntimeWarning, match="did not reach"):
            (_, cut), _ = solve_layers(kind, layers, causal=True, max_iter=1)
        monkeypatch.undo()
        with pytest.warns(RuntimeWarning, match="did not reach"):
            (_, ref_cut), _ = solve_layers(kind, layers, causal=True, max_iter=1)
        assert not bool(ref_cut.converged.any())
        assert torch.equal(cut.converged, ref_cut.converged)


def test_joint_causal_solve_fits_the_budget_with_all_layers(monkeypatch):
    # on CUDA the layers are solved together when they fit the budget; each
    # layer was checked alone, while the joint solve holds all of them at
    # once: 24 layers that fit one by one took 7 times the budget
    from captum_effattn._core import functional
    from captum_effattn._core.functional import solve_layers

    layers = [_layer_inputs(seed) for seed in range(3)]
    one = functional._causal_bytes_per_row(layers[0], torch.float64, 24) * 24
    chunked = []
    original = functional._causal_row_chunks

    def spy(inputs, dtype):
        chunked.append(inputs)
        return original(inputs, dtype)

    monkeypatch.setattr(functional, "_causal_row_chunks", spy)
    for budget, layer_by_layer in ((3 * one, False), (2 * one, True)):
        chunked.clear()
        monkeypatch.setattr(functional, "_default_chunk_bytes", lambda d: budget)
        solve_layers("efficient", layers, causal=True, joint=True)
        assert bool(chunked) == layer_by_layer, budget


def test_causal_row_chunks_fit_the_budget():
    # all rows of a 1,024-token GPT-2 input (12 heads of 64) would hold 6.5
    # GiB per copy of their bases: they go in chunks of the 256 MiB budget,
    # each on the multiple of 32 keys above its rows' last key
    from captum_effattn._core.functional import CAUSAL_COPIES, _causal_row_chunks
    from captum_effattn._core.solver import CHUNK_BYTES

    n = 1024
    probs = torch.empty(1, 12, n, n, device="meta")
    values = torch.empty(1, 12, n, 64, device="meta")
    rows = torch.arange(n).flip(0)[None]  # any order
    chunks = _causal_row_chunks((probs, values, None, None, rows), torch.float64)
    cols = torch.cat([c for c, _ in chunks])
    assert sorted(cols.tolist()) == list(range(n))  # every row once
    for c, e in chunks:
        last = int(rows[0, c].max()) + 1
        assert e % 32 == 0 and e - 32 < last <= e  # the smallest such multiple
        per_row = 12 * e * 65 * 8 * CAUSAL_COPIES
        assert c.numel() * per_row <= CHUNK_BYTES
    # as large as the budget allows: one more row would not fit
    widest = max(c.numel() for c, e in chunks if e == n)
    assert (widest + 1) * 12 * n * 65 * 8 * CAUSAL_COPIES > CHUNK_BYTES


def test_causal_rows_answer_the_same_whatever_rows_share_their_chunk(monkeypatch):
    # A row's shapes depend on its position only, so its answer does not
    # depend on which other rows are asked for or on the budget, even for a
    # head with a singular value near the rank tolerance, whose direction is
    # rounding noise (cutting the keys at each chunk's last row once moved
    # such a row by 0.02 when row 63 was asked for too).
    from captum_effattn._core import functional
    from captum_effattn._core.functional import solve_layers

    n, dh = 64, 4
    g = torch.Generator().manual_seed(1)
    q1, _ = torch.linalg.qr(torch.randn(10, dh, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(dh, dh, generator=g, dtype=torch.float64))
    v = torch.randn(1, 1, n, dh, generator=g, dtype=torch.float64)
    s = torch.tensor([1.0, 1.0, 1.0, 5e-15], dtype=torch.float64)
    v[0, 0, :10] = q1 @ torch.diag(s) @ q2.T  # 22 eps: kept for 10 keys
    w = torch.eye(dh, dtype=torch.float64)[None]
    keys = torch.ones(1, n, dtype=torch.bool)
    logits = torch.randn(1, 1, n, n, generator=g, dtype=torch.float64) * 3
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    probs = torch.softmax(logits.masked_fill(~causal, -torch.inf), -1)
    for kind in ("efficient", "effective"):

        def row9(rows):
            inputs = (probs, v, w, keys, torch.tensor([rows]))
            out, cert = solve_layers(kind, [inputs], causal=True, joint=False)[0]
            return out[0, 0, rows.index(9)], cert

        alone, cert = row9([9])
        assert int(cert.rank) == (5 if kind == "efficient" else 4)
        assert torch.equal(row9([9, 63])[0], alone)
        assert torch.equal(row9([40, 9, 3])[0], alone)
        monkeypatch.setattr(functional, "_default_chunk_bytes", lambda d: 1)
        assert torch.equal(row9([9, 63, 12])[0], alone)
        monkeypatch.undo()


@pytest.mark.parametrize("causal", [False, True])
def test_joint_solve_of_layers_equals_layer_by_layer(causal):
    # the path CUDA takes by default (all layers in one solver call) gives
    # each layer's own answer and certificate
    from captum_effattn._core.functional import solve_layer, solve_layers

    layers = [_layer_inputs(seed) for seed in range(3)]
    joint = solve_layers("efficient", layers, causal=causal, joint=True)
    assert len(joint) == 3
    for inputs, (out, cert) in zip(layers, joint):
        ref, ref_cert = solve_layer("efficient", *inputs, causal=causal)
        assert cert.ok(rtol=1e-9), str(cert)
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
        assert bool((cert.rank == ref_cert.rank).all())
    # raw and effective attention ignore ``joint``
    for kind in ("raw", "effective"):
        both = solve_layers(kind, layers, causal=causal, joint=True)
        for inputs, (out, _) in zip(layers, both):
            ref, _ = solve_layer(kind, *inputs, causal=causal)
            torch.testing.assert_close(out, ref, atol=0, rtol=0)


# ------------------------------------------ rows with a cancelling output
def test_certificate_of_a_row_whose_output_cancels():
    # A_i T = 0 exactly (half the weight on +1, half on -1): the relative
    # output residual divided by ‖A_i T‖ = 0 and failed a correct answer
    # with 1e+284; it is now measured against sqrt(eps) max_j ‖t_j‖ there
    from captum_effattn._core.functional import solve_layer

    v = torch.tensor([[0.0], [1.0], [-1.0], [2.0], [-3.0]], dtype=torch.float64)
    w = torch.ones(1, 1, 1, dtype=torch.float64)
    a = torch.tensor([0.0, 0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    probs = a.expand(5, 5)[None, None].clone()
    keys = torch.ones(1, 5, dtype=torch.bool)
    out, cert = solve_layer(
        "efficient", probs, v[None, None], w, keys, torch.arange(5)[None]
    )
    x = out[0, 0, 0]
    assert abs(float(x @ v[:, 0])) < 1e-14 and abs(float(x.sum()) - 1) < 1e-14
    assert float(x.min()) > 0.1  # the minimum-norm point, not A_i
    assert cert.ok(), cert
    assert float(cert.output_residual.max()) < 1e-6
    # ... and it still fails an answer that changes the output
    from captum_effattn._core.functional import _certificate

    bad = out.clone()
    bad[0, 0, 0] = torch.tensor([0.0, 0.6, 0.4, 0.0, 0.0], dtype=torch.float64)
    fkeys = keys[:, None, None].to(torch.float64)
    zero = torch.zeros(1, 1, dtype=torch.float64)
    wrong = _certificate(
        bad, probs, v[None, None], w, fkeys, keys, zero, zero.long(), zero.long(), 1e-12
    )
    assert not wrong.ok()


# ------------------------------------------------------ padded query rows
def test_padded_query_rows_are_not_solved():
    # a pad token's row attends to the real keys like any other and used to
    # go through the interior point (242 solved rows for 64 real ones here);
    # anything in it, even NaN, must stay out of the answer
    import warnings

    import captum_effattn._core.functional as F

    rng = np.random.default_rng(0)
    b, h, n, dh, real = 1, 4, 64, 4, 16
    v = torch.tensor(rng.standard_normal((b, h, n, dh)))
    w = torch.tensor(rng.standard_normal((h, dh, 8)))
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[0, :real] = True
    logits = torch.tensor(5 * rng.standard_normal((b, h, n, n)))
    probs = torch.softmax(logits.masked_fill(~mask[:, None, None], -1e30), -1)
    seen = []
    solve = F.min_norm_simplex_solve

    def spy(c, rhs, *args, **kwargs):
        x, lam, info = solve(c, rhs, *args, **kwargs)
        seen.append(int((info.iterations > 0).sum()))
        return x, lam, info

    rows = torch.arange(n)[None]
    try:
        F.min_norm_simplex_solve = spy
        out, cert = F.solve_layer("efficient", probs, v, w, mask, rows)
    finally:
        F.min_norm_simplex_solve = solve
    assert 0 < seen[0] <= real * h
    assert cert.ok()
    bad = probs.clone()
    bad[0, 0, 40] = float("nan")  # a padded query row
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, got_cert = F.solve_layer("efficient", bad, v, w, mask, rows)
    assert not bool(torch.isnan(got).any())
    torch.testing.assert_close(got, out, rtol=0, atol=0)
    assert got_cert.ok()
