"""Entropy / log-prob kernels against a float64 reference: torch path, hidden-state path, gradients, Triton.

Fresh random inputs every run (seeded per test from the clock-free `rng` fixture below, printed on failure)
mixing low-entropy rows, high-entropy rows, huge logits, masked (-inf) entries, temperatures != 1 and
vocabularies that are not a multiple of any block size. Bounds: entropy <= 1e-4 nats, log-prob <= 1e-5
(relative to the log-prob's size once it exceeds 1, the float32 output's own resolution).
"""

from __future__ import annotations

import os
import sys

import pytest

torch = pytest.importorskip("torch")

from wbtrace.errors import BadInputError  # noqa: E402
from wbtrace.kernels import entropy_logprob, entropy_logprob_from_hidden  # noqa: E402
from wbtrace.kernels.hidden import hidden_row_stats  # noqa: E402
from wbtrace.kernels.reference import entropy_logprob_chunked, entropy_logprob_float64  # noqa: E402

ENTROPY_TOL = 1e-4
LOGPROB_TOL = 1e-5


@pytest.fixture
def gen(request):
    seed = int.from_bytes(os.urandom(4), "little")
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


def mixed_logits(gen, n_rows: int, vocab: int, dtype=torch.float32):
    """Rows of five kinds: peaked (H ~ 0), flat (H ~ log V), ordinary, huge offsets, partly masked."""
    x = torch.randn(n_rows, vocab, generator=gen) * 3
    kind = torch.arange(n_rows) % 5
    peak = torch.randint(0, vocab, (n_rows,), generator=gen)
    x[kind == 0, :] *= 0.1
    x[kind == 0, peak[kind == 0]] = 40.0
    x[kind == 1] *= 0.01
    x[kind == 3] = x[kind == 3] * 30 + 1e4 * torch.sign(torch.randn(int((kind == 3).sum()), 1, generator=gen))
    masked = (kind == 4).unsqueeze(-1) & (torch.rand(n_rows, vocab, generator=gen) < 0.3)
    masked[torch.arange(n_rows), peak] = False  # a fully masked row has no entropy: tested on its own
    x = x.masked_fill(masked, float("-inf"))
    ids = torch.randint(0, vocab, (n_rows,), generator=gen)
    # Sample a few ids from the row's own top entries so the likely-token branch is exercised too.
    ids[::3] = x[::3].argmax(-1)
    ids = torch.where(torch.isinf(x.gather(-1, ids[:, None]))[:, 0], x.argmax(-1), ids)
    return x.to(dtype), ids


def assert_close_to_reference(entropy, logprob, logits, ids, temperature):
    ref_h, ref_lp = entropy_logprob_float64(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1), temperature)
    assert entropy.dtype == torch.float32 and logprob.dtype == torch.float32
    err_h = (entropy.reshape(-1).double().cpu() - ref_h.cpu()).abs()
    err_lp = (logprob.reshape(-1).double().cpu() - ref_lp.cpu()).abs() / ref_lp.cpu().abs().clamp(min=1)
    assert err_h.max().item() <= ENTROPY_TOL, f"entropy error {err_h.max().item():.3g}"
    assert err_lp.max().item() <= LOGPROB_TOL, f"logprob error {err_lp.max().item():.3g}"


# ------------------------------------------------------------------------------------ logits, torch path


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
@pytest.mark.parametrize("vocab", [1, 7, 1009, 5003])
def test_entropy_logprob_matches_float64(gen, vocab, temperature):
    logits, ids = mixed_logits(gen, 23, vocab)
    entropy, logprob = entropy_logprob(logits, ids, temperature)
    assert_close_to_reference(entropy, logprob, logits, ids, temperature)
    assert entropy.min().item() >= -ENTROPY_TOL


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_exact_for_their_values(gen, dtype):
    logits, ids = mixed_logits(gen, 20, 3001)
    logits = logits.clamp(-6e4, 6e4).to(dtype)  # float16 tops out at 65504
    entropy, logprob = entropy_logprob(logits, ids, 0.9)
    assert_close_to_reference(entropy, logprob, logits, ids, 0.9)


def test_chunking_does_not_change_results(gen):
    logits, ids = mixed_logits(gen, 37, 511)
    whole = entropy_logprob_chunked(logits, ids, 1.3, chunk_rows=37)
    for rows in (1, 5, 16):
        parts = entropy_logprob_chunked(logits, ids, 1.3, chunk_rows=rows)
        torch.testing.assert_close(parts, whole, rtol=0, atol=1e-6, equal_nan=False)


def test_batched_and_sliced_shapes(gen):
    logits, ids = mixed_logits(gen, 3 * 9, 257)
    logits, ids = logits.reshape(3, 9, 257), ids.reshape(3, 9)
    entropy, logprob = entropy_logprob(logits, ids)
    assert entropy.shape == (3, 9) and logprob.shape == (3, 9)
    # logits[:, :-1] cannot be viewed as one [N, V] matrix (the trainer's next-token slice).
    sliced_h, sliced_lp = entropy_logprob(logits[:, :-1], ids[:, 1:])
    ref_h, ref_lp = entropy_logprob(logits[:, :-1].contiguous(), ids[:, 1:].contiguous())
    torch.testing.assert_close(sliced_h, ref_h, rtol=0, atol=0)
    torch.testing.assert_close(sliced_lp, ref_lp, rtol=0, atol=0)
    one_h, one_lp = entropy_logprob(logits[1, 2], ids[1, 2])
    assert one_h.shape == () and one_h.item() == pytest.approx(entropy[1, 2].item(), abs=1e-6)


def test_uniform_and_one_hot_rows_hit_the_known_values():
    vocab = 1000
    logits = torch.zeros(2, vocab)
    logits[1, 17] = 1e4
    entropy, logprob = entropy_logprob(logits, torch.tensor([5, 17]))
    assert entropy[0].item() == pytest.approx(torch.log(torch.tensor(1000.0)).item(), abs=1e-5)
    assert logprob[0].item() == pytest.approx(-torch.log(torch.tensor(1000.0)).item(), abs=1e-5)
    assert entropy[1].item() == 0.0 and logprob[1].item() == 0.0


def test_fully_masked_row_is_nan_and_leaves_others_alone():
    logits = torch.randn(3, 50)
    logits[1] = float("-inf")
    entropy, _ = entropy_logprob(logits, torch.zeros(3, dtype=torch.long))
    assert torch.isnan(entropy[1]) and torch.isfinite(entropy[[0, 2]]).all()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: (torch.randn(4, 10), torch.zeros(5, dtype=torch.long), 1.0), "token_ids shape"),
        (lambda: (torch.randn(4, 10), torch.full((4,), 10), 1.0), r"in \[0, 10\)"),
        (lambda: (torch.randn(4, 10), torch.full((4,), -1), 1.0), r"in \[0, 10\)"),
        (lambda: (torch.randn(4, 10), torch.zeros(4), 1.0), "must be integers"),
        (lambda: (torch.randn(4, 10), torch.zeros(4, dtype=torch.long), 0.0), "temperature"),
        (lambda: (torch.randn(4, 10), torch.zeros(4, dtype=torch.long), float("nan")), "temperature"),
        (lambda: (torch.zeros(4, 10, dtype=torch.long), torch.zeros(4, dtype=torch.long), 1.0), "floating"),
    ],
)
def test_bad_input_raises_one_clear_error(make, message):
    logits, ids, temperature = make()
    with pytest.raises(BadInputError, match=message):
        entropy_logprob(logits, ids, temperature)


# ------------------------------------------------------------------------------------------- gradients


def float64_loss_grad(logits, ids, temperature, w_h, w_lp):
    x = logits.detach().double().requires_grad_(True)
    logp = torch.log_softmax(x / temperature, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    lp = logp.gather(-1, ids[:, None])[:, 0]
    (w_h * entropy + w_lp * lp).sum().backward()
    return x.grad


@pytest.mark.parametrize("use_entropy", [False, True])
def test_gradients_match_float64_autograd(gen, use_entropy):
    logits, ids = mixed_logits(gen, 15, 301)
    logits = logits[torch.arange(15) % 5 != 4]  # masked rows: float64 autograd itself gives NaN there
    ids = ids[torch.arange(15) % 5 != 4]
    w_h = torch.randn(len(ids), generator=gen) if use_entropy else torch.zeros(len(ids))
    w_lp = torch.randn(len(ids), generator=gen)
    x = logits.clone().requires_grad_(True)
    entropy, logprob = entropy_logprob(x, ids, 0.8)
    loss = (w_lp * logprob).sum() + ((w_h * entropy).sum() if use_entropy else 0)
    loss.backward()
    expected = float64_loss_grad(logits, ids, 0.8, w_h.double(), w_lp.double())
    torch.testing.assert_close(x.grad.double(), expected, rtol=1e-4, atol=1e-5)


# -------------------------------------------------------------------------------------- hidden states


def hidden_case(gen, n=40, h=24, vocab=997, bias=True):
    hidden = torch.randn(n, h, generator=gen)
    weight = torch.randn(vocab, h, generator=gen) * 0.7
    b = torch.randn(vocab, generator=gen) if bias else None
    ids = torch.randint(0, vocab, (n,), generator=gen)
    return hidden, weight, b, ids


def hidden_reference(hidden, weight, bias, ids, temperature):
    logits = hidden.double() @ weight.double().T + (0 if bias is None else bias.double())
    return entropy_logprob_float64(logits, ids, temperature)


@pytest.mark.parametrize("bias", [False, True])
def test_from_hidden_matches_float64(gen, bias):
    hidden, weight, b, ids = hidden_case(gen, bias=bias)
    entropy, logprob = entropy_logprob_from_hidden(hidden, weight, ids, bias=b, temperature=1.2)
    ref_h, ref_lp = hidden_reference(hidden, weight, b, ids, 1.2)
    # The float32 matmul itself rounds the logits (~1e-6 relative): that is the bound's whole budget.
    assert (entropy.double() - ref_h).abs().max().item() <= ENTROPY_TOL
    assert ((logprob.double() - ref_lp).abs() / ref_lp.abs().clamp(min=1)).max().item() <= 1e-5


@pytest.mark.parametrize("budget", [997 * 4 * 7, 997 * 4 * 64 - 1, 4 * 3 * 64])
def test_from_hidden_row_and_vocab_chunking(gen, budget):
    """Budgets that force row chunks of 7, a vocabulary split, and vocabulary blocks of 3 entries."""
    hidden, weight, b, ids = hidden_case(gen, n=70)
    weight[5] = 50.0  # one dominant, far-off logit in the first vocabulary block: rescaling must hold
    stats = hidden_row_stats(hidden, weight, b, ids, 0.7, lambda x, i, t: entropy_logprob_chunked(
        x, i, t, return_stats=True), budget)
    ref_h, ref_lp = hidden_reference(hidden, weight, b, ids, 0.7)
    assert (stats[0].double() - ref_h).abs().max().item() <= ENTROPY_TOL
    assert ((stats[1].double() - ref_lp).abs() / ref_lp.abs().clamp(min=1)).max().item() <= 1e-5


def test_from_hidden_gradients_match_float64_autograd(gen):
    hidden, weight, b, ids = hidden_case(gen, n=33, vocab=211)
    leaves = [t.clone().requires_grad_(True) for t in (hidden, weight, b)]
    entropy, logprob = entropy_logprob_from_hidden(leaves[0], leaves[1], ids, bias=leaves[2], temperature=0.9)
    w_h, w_lp = torch.randn(33, generator=gen), torch.randn(33, generator=gen)
    ((w_h * entropy).sum() + (w_lp * logprob).sum()).backward()
    ref = [t.double().requires_grad_(True) for t in (hidden, weight, b)]
    logp = torch.log_softmax((ref[0] @ ref[1].T + ref[2]) / 0.9, -1)
    ref_loss = (w_h.double() * -(logp.exp() * logp).sum(-1)).sum() + (w_lp.double() * logp.gather(
        -1, ids[:, None])[:, 0]).sum()
    ref_loss.backward()
    for got, want in zip(leaves, ref, strict=True):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-4)


def test_from_hidden_rejects_mismatched_weight():
    with pytest.raises(BadInputError, match="weight must be"):
        entropy_logprob_from_hidden(torch.randn(4, 8), torch.randn(10, 9), torch.zeros(4, dtype=torch.long))
    with pytest.raises(BadInputError, match="weight is torch.float64"):
        entropy_logprob_from_hidden(torch.randn(4, 8), torch.randn(10, 8, dtype=torch.float64),
                                    torch.zeros(4, dtype=torch.long))


# -------------------------------------------------------------------- Triton kernel, interpreter on CPU


# Triton's interpreter must be switched on before `triton` is first imported (its own `tl.max`, `tl.sum`
# are jit functions bound at import), so these tests run in a child pytest with TRITON_INTERPRET=1.
IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"


def test_triton_kernels_under_interpreter():
    pytest.importorskip("triton")
    if IN_INTERPRETER:
        pytest.skip("this process already runs the triton_kernel tests itself")
    import subprocess

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    child = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "triton_kernel and not under_interpreter",
         "-W", "ignore::RuntimeWarning"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
    assert " passed" in child.stdout and "skipped" not in child.stdout, child.stdout[-2000:]


@pytest.fixture
def triton_rows():
    """The Triton kernel's host function; its kernel runs on CPU tensors through the interpreter."""
    if not IN_INTERPRETER:
        pytest.skip("runs inside test_triton_kernels_under_interpreter")
    pytest.importorskip("triton")
    from wbtrace.kernels.triton_entropy import entropy_logprob_rows

    return entropy_logprob_rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vocab, block", [(1009, 256), (7, 16), (4099, 1024)])
def test_triton_kernel_matches_float64(gen, triton_rows, dtype, vocab, block):
    logits, ids = mixed_logits(gen, 15, vocab)
    logits = logits.clamp(-6e4, 6e4).to(dtype)
    for temperature in (1.0, 0.65):
        entropy, logprob, _, _ = triton_rows(logits, ids, temperature, block_v=block, num_warps=4)
        assert_close_to_reference(entropy, logprob, logits, ids, temperature)


def test_triton_kernel_strided_rows_stats_and_bad_ids(gen, triton_rows):
    wide, ids = mixed_logits(gen, 10, 600)
    logits = wide[:, :517]  # row stride 600, V = 517
    ids = ids.clamp(max=516)
    got = triton_rows(logits, ids, 1.4, block_v=128, num_warps=4)
    want = entropy_logprob_chunked(logits, ids, 1.4, return_stats=True)
    for a, b in zip(got, want, strict=True):  # m and log s feed the backward pass: they must agree too
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    bad = ids.clone()
    bad[3], bad[4] = -1, 517
    entropy, logprob, _, _ = triton_rows(logits, bad, 1.4, block_v=128, num_warps=4)
    assert torch.isnan(logprob[3:5]).all() and torch.isfinite(logprob[[0, 1, 2, 5]]).all()
    torch.testing.assert_close(entropy, got[0], rtol=0, atol=0)


def test_triton_kernel_gradients_and_hidden_chunks(gen, triton_rows):
    from wbtrace.kernels.autograd import apply_logits

    logits, ids = mixed_logits(gen, 8, 333)
    logits, ids = logits[torch.arange(8) % 5 != 4], ids[torch.arange(8) % 5 != 4]
    x = logits.clone().requires_grad_(True)
    w_h, w_lp = torch.randn(len(ids), generator=gen), torch.randn(len(ids), generator=gen)
    entropy, logprob = apply_logits(x, ids, 1.1, triton_rows)
    ((w_h * entropy).sum() + (w_lp * logprob).sum()).backward()
    expected = float64_loss_grad(logits, ids, 1.1, w_h.double(), w_lp.double())
    torch.testing.assert_close(x.grad.double(), expected, rtol=1e-4, atol=1e-5)

    hidden, weight, b, hids = hidden_case(gen, n=20, vocab=300)
    stats = hidden_row_stats(hidden, weight, b, hids, 0.8, triton_rows, budget_bytes=300 * 4 * 8)
    ref_h, _ = hidden_reference(hidden, weight, b, hids, 0.8)
    assert (stats[0].double() - ref_h).abs().max().item() <= ENTROPY_TOL
