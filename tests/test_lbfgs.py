"""BatchedLBFGS against torch.optim.LBFGS run alone on each sample, step by step."""

import pytest
import torch

from nstexp.optim.lbfgs import BatchedLBFGS

B, SHAPE, K = 3, (2, 5, 5), 40
N = 2 * 5 * 5
LRS = [1.0, 0.5, 0.8]


def make_problem(dtype=torch.float64, device="cpu"):
    """Per-sample smooth, strictly convex, non-quadratic objectives f_b and a start point x0 (B, 2, 5, 5).

    f_b(x) = c_b * sum(logcosh(A_b x + u_b)) + mu_b/2 * ||x||^2, with fixed random A_b, u_b.
    Strict convexity keeps y.s > 0, so torch never rejects a pair and the histories agree.
    """
    gen = torch.Generator().manual_seed(0)
    A = (torch.randn(B, K, N, generator=gen, dtype=torch.float64) / N ** 0.5).to(dtype=dtype, device=device)
    u = torch.randn(B, K, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    c = torch.tensor([1.0, 1.0, 2.0], dtype=dtype, device=device)
    mu = torch.tensor([0.1, 0.3, 0.05], dtype=dtype, device=device)
    x0 = (2.0 * torch.randn(B, *SHAPE, generator=gen, dtype=torch.float64)).to(dtype=dtype, device=device)

    def f(b, xb):  # xb: (2, 5, 5), one sample
        z = A[b] @ xb.reshape(-1) + u[b]
        return c[b] * torch.log(torch.cosh(z)).sum() + 0.5 * mu[b] * (xb * xb).sum()

    return f, x0


def batched_grad(f, x, weights=None):
    """Gradient of sum_b w_b f_b(x_b) at x (B, ...): per-sample gradients do not mix."""
    xr = x.detach().requires_grad_(True)
    w = weights if weights is not None else [1.0] * x.shape[0]
    loss = sum(w[b] * f(b, xr[b]) for b in range(x.shape[0]))
    return torch.autograd.grad(loss, xr)[0]


def torch_paths(f, x0, lrs, m, steps, weights=None, active=None, box=None, rejections=False):
    """x after each step (steps, B, ...) of torch.optim.LBFGS run alone on each sample.

    weights[k][b] scales f_b at step k (0 gives a zero gradient); active[k][b] False skips the
    step; box=(lo, hi) clamps after each step, with the usual correction of torch's state['d'].
    rejections: the problem may reject pairs (else that no pair was rejected is checked).
    """
    out = torch.empty(steps, *x0.shape, dtype=x0.dtype)
    for b in range(B):
        xb = x0[b].clone().requires_grad_(True)
        opt = torch.optim.LBFGS([xb], lr=lrs[b], max_iter=1, history_size=m, line_search_fn=None,
                                tolerance_grad=0, tolerance_change=0)
        for k in range(steps):
            w = 1.0 if weights is None else weights[k][b]

            def closure(opt=opt, w=w, b=b, xb=xb):
                opt.zero_grad()
                loss = w * f(b, xb)
                loss.backward()
                return loss

            if active is None or active[k][b]:
                before = xb.detach().clone()
                opt.step(closure)
                if box is not None:
                    with torch.no_grad():
                        xb.clamp_(*box)
                    st = opt.state[xb]
                    if "t" in st:
                        st["d"] = (xb.detach() - before).flatten() / st["t"]
                st = opt.state[xb]
                if "old_dirs" in st and w != 0 and not rejections:
                    # No pair was rejected: the premise of an exact comparison with the ring.
                    assert len(st["old_dirs"]) == min(st["n_iter"] - 1, m)
            out[k, b] = xb.detach()
    return out


def batched_path(f, x0, lrs, m, steps, weights=None, active=None, box=None, losses=False):
    """losses: each step is given the samples' losses (the engine's call), so a step that
    more than doubles one is taken back."""
    x = x0.clone()
    opt = BatchedLBFGS(x, lrs, history_size=m)
    out = torch.empty(steps, *x0.shape, dtype=x0.dtype)
    for k in range(steps):
        g = batched_grad(f, x, None if weights is None else weights[k])
        act = None if active is None else torch.tensor(active[k])
        opt.step(g, act, torch.tensor(total_loss(f, x), dtype=x.dtype) if losses else None)
        if box is not None:
            x.clamp_(*box)
        out[k] = x
    return out


def assert_close(a, b):
    scale = max(a.abs().max().item(), b.abs().max().item())
    err = (a - b).abs().max().item()
    assert err <= 1e-9 * (1 + scale), f"max abs diff {err:.3g} (scale {scale:.3g})"


def total_loss(f, x):
    return [f(b, x[b]).item() for b in range(x.shape[0])]


def test_matches_torch_step_by_step():
    f, x0 = make_problem()
    steps, m = 25, 5  # ring wraps after 5 pairs
    ref = torch_paths(f, x0, LRS, m, steps)
    got = batched_path(f, x0, LRS, m, steps)
    for k in range(steps):
        assert_close(got[k], ref[k])
    # Not vacuous: every sample moved far and its loss fell a lot.
    f0, f1 = total_loss(f, x0), total_loss(f, got[-1])
    for b in range(B):
        assert (got[-1, b] - x0[b]).abs().max() > 0.5
        assert f1[b] < 0.5 * f0[b], (f0, f1)


def test_clamped_matches_torch_with_corrected_direction():
    f, x0 = make_problem()
    steps, m, box = 25, 5, (-1.5, 1.5)
    x0 = x0.clamp(*box)
    ref = torch_paths(f, x0, LRS, m, steps, box=box)
    got = batched_path(f, x0, LRS, m, steps, box=box)
    for k in range(steps):
        assert_close(got[k], ref[k])
    # The box was active: some coordinates sit on it at the end, others are inside.
    on_box = (got[-1].abs() == 1.5).sum().item()
    assert 0 < on_box < got[-1].numel()


@pytest.mark.parametrize("m", [5, 50])
def test_inactive_sample_is_frozen_and_others_unaffected(m):
    f, x0 = make_problem()
    steps = 20
    # Sample 1 is frozen on its first steps (it starts late) and again in the middle.
    active = [[True, not (k < 2 or 8 <= k < 12), True] for k in range(steps)]
    got = batched_path(f, x0, LRS, m, steps, active=active)
    ref = torch_paths(f, x0, LRS, m, steps, active=active)
    for k in range(steps):
        assert_close(got[k, [0, 2]], ref[k, [0, 2]])
        if not active[k][1]:
            prev = x0[1] if k == 0 else got[k - 1, 1]
            assert torch.equal(got[k, 1], prev)
    if m >= steps:
        # No slot was evicted: the frozen sample follows torch with those steps skipped.
        for k in range(steps):
            assert_close(got[k], ref[k])
    # Freezing a sample changes nothing for the others: same path as an all-active run.
    free = batched_path(f, x0, LRS, m, steps)
    assert torch.equal(got[:, [0, 2]], free[:, [0, 2]])


@pytest.mark.parametrize("m", [5, 50])
def test_zero_gradient_sample_does_not_move(m):
    f, x0 = make_problem()
    steps = 20
    # Sample 0: zero gradient throughout. Sample 2: zero gradient on steps 6..9 only.
    weights = [[0.0, 1.0, 0.0 if 6 <= k < 10 else 1.0] for k in range(steps)]
    got = batched_path(f, x0, LRS, m, steps, weights=weights)
    ref = torch_paths(f, x0, LRS, m, steps, weights=weights)
    assert torch.equal(got[:, 0], x0[0].expand(steps, *SHAPE))
    for k in range(6, 10):
        assert torch.equal(got[k, 2], got[5, 2])
    for k in range(steps):
        assert_close(got[k, [0, 1]], ref[k, [0, 1]])
        # Without eviction sample 2 resumes exactly as torch does. With a short ring it agrees
        # until it resumes; then its zero-gradient steps have taken ring slots (ro = 0) and
        # evicted pairs torch still holds: the documented departure.
        if m >= steps or k < 10:
            assert_close(got[k], ref[k])


def test_frozen_and_zero_gradient_samples_keep_their_state():
    # Paths alone cannot see this: a BFGS pair is superseded by a later pair with the same s,
    # so a wrongly accepted pair during a freeze could leave the trajectory unchanged.
    f, x0 = make_problem()
    x = x0.clone()
    opt = BatchedLBFGS(x, LRS, history_size=4)
    for _ in range(3):
        opt.step(batched_grad(f, x))
    for frozen, zero_grad in ((1, False), (2, True)):
        before = [t[frozen].clone() for t in (opt.h_diag, opt.x_prev, opt.g_prev, opt.started, x)]
        g = batched_grad(f, x)
        active = torch.ones(B, dtype=torch.bool)
        if zero_grad:
            g[frozen] = 0.0
        else:
            active[frozen] = False
        opt.step(g, active)
        after = [t[frozen] for t in (opt.h_diag, opt.x_prev, opt.g_prev, opt.started, x)]
        assert all(torch.equal(a, b) for a, b in zip(before, after))
        newest = (opt.pos - 1) % opt.m
        assert opt.ro_hist[newest, frozen] == 0 and not opt.y_hist[newest, frozen].any()
        assert (opt.ro_hist[newest, [i for i in range(B) if i != frozen]] > 0).all()
    # A diverged (NaN gradient) sample that is frozen stays put and poisons no one.
    g = batched_grad(f, x)
    g[0] = float("nan")
    x_before = x.clone()
    opt.step(g, torch.tensor([False, True, True]))
    assert torch.equal(x[0], x_before[0]) and torch.isfinite(x).all()
    opt.step(batched_grad(f, x), torch.tensor([False, True, True]))
    assert torch.equal(x[0], x_before[0]) and torch.isfinite(x).all()


def test_step_never_reads_tensor_values_on_host(monkeypatch):
    f, x0 = make_problem(dtype=torch.float32)
    x = x0.clone()
    opt = BatchedLBFGS(x, torch.tensor(LRS), history_size=3)

    def no_sync(*args, **kwargs):
        raise AssertionError("host synchronisation in BatchedLBFGS.step")

    grads = []
    for _ in range(6):  # gradients precomputed: autograd itself is not under test
        grads.append(batched_grad(f, x))
        x.add_(0.01)
    x.copy_(x0)
    for name in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, no_sync)
    with pytest.raises(AssertionError):
        bool(torch.ones(()))  # the patch is in force
    for k, g in enumerate(grads):  # first step, pairs, a wrapped ring, masks
        opt.step(g, torch.tensor([True, True, k != 3]))
        x.clamp_(-1.5, 1.5)
    monkeypatch.undo()
    assert torch.isfinite(x).all() and not torch.equal(x, x0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_sync_on_cuda():
    f, x0 = make_problem(dtype=torch.float32, device="cuda")
    x = x0.clone()
    opt = BatchedLBFGS(x, LRS, history_size=3)
    grads = [batched_grad(f, x) for _ in range(5)]
    masks = [torch.tensor([True, True, k != 3], device="cuda") for k in range(5)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for g, a in zip(grads, masks):
            opt.step(g, a)
            x.clamp_(-1.5, 1.5)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(x).all().item()


def test_the_fallback_step_doubles_while_every_pair_is_rejected():
    # f(x) = -|x|^2 / 2 is concave: y = -s, so y.s < 0 and every pair is rejected. Hand-computed
    # path: the first step is torch's, x1 = x0 (1 + min(1, 1/|g0|_1) lr), since d = -g = x; the
    # fallback after r rejections steps lr 2^(r-1) along d = x: x_k = x_(k-1) (1 + lr 2^(k-2)).
    lr = 0.01
    x0 = torch.tensor([[0.3, -0.2, 0.1]], dtype=torch.float64)
    x = x0.clone()
    opt = BatchedLBFGS(x, lr, history_size=5)
    expected = x0 * (1 + min(1.0, 1.0 / x0.abs().sum().item()) * lr)
    opt.step(-x.clone())
    assert torch.allclose(x, expected, rtol=1e-12, atol=0)
    for k in range(2, 7):
        opt.step(-x.clone())
        expected = expected * (1 + lr * 2 ** (k - 2))
        assert torch.allclose(x, expected, rtol=1e-12, atol=0)
    assert (opt.accepted.item(), opt.rejected.item()) == (0, 5)


def test_a_non_convex_start_with_one_rejected_pair_follows_torch():
    # f(x) = -a|x|^2/2 + |x|^4/4: negative curvature near 0, positive beyond |x|^2 = a/3. From a
    # small start, the first pair is rejected (y.s < 0) and the later ones are accepted: one
    # rejection before the first acceptance, where the batched L-BFGS is torch's step for step.
    a = 1.0

    def f(b, xb):
        r2 = (xb * xb).sum()
        return -0.5 * a * r2 + 0.25 * r2 * r2

    gen = torch.Generator().manual_seed(1)
    x0 = 0.05 * torch.randn(B, *SHAPE, generator=gen, dtype=torch.float64)
    lrs, steps = [1.0, 0.7, 0.9], 12
    ours = batched_path(f, x0, lrs, 20, steps)
    # The premise: in every sample the first pair is rejected and the second accepted (later
    # ones, near the minimum, fall under 1e-10 again: rejections after an acceptance are torch's).
    x = x0.clone()
    opt = BatchedLBFGS(x, lrs, history_size=20)
    counts = []
    for _ in range(steps):
        opt.step(batched_grad(f, x))
        counts.append((opt.accepted.tolist(), opt.rejected.tolist()))
    assert counts[1] == ([0] * B, [1] * B) and counts[2] == ([1] * B, [1] * B)
    # The ring's departure plays no part here (20 slots > 12 steps): the paths are torch's.
    assert_close(ours, torch_paths(f, x0, lrs, 20, steps, rejections=True))
    assert total_loss(f, ours[-1]) == pytest.approx([-a * a / 4] * B, abs=1e-6)  # the minimum, -a²/4



def test_a_pair_whose_gradient_change_is_nearly_orthogonal_to_the_step_is_rejected():
    # Hand-made gradients: from x0 = e1 with g0 = e1 the first step is s = -lr e1. A gradient
    # change y = (-delta, 1, 0, 0) gives y.s = lr delta > 1e-10 (torch would accept it), but
    # cos(y, s) = delta / |y| ~ 1e-4: what rounding noise in the gradient (bf16) makes of a
    # short step, not curvature along it, and 1 / (y.s) would blow up the two-loop recursion.
    # A y at 45 degrees to s is curvature: accepted.
    lr = 0.5
    for delta, counts in ((1e-4, (0, 1)), (1.0, (1, 0))):
        x = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
        g0 = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
        opt = BatchedLBFGS(x, lr, history_size=5)
        opt.step(g0.clone())
        assert torch.allclose(x, torch.tensor([[1.0 - lr, 0.0, 0.0, 0.0]], dtype=torch.float64))
        opt.step(g0 + torch.tensor([[-delta, 1.0, 0.0, 0.0]], dtype=torch.float64))
        assert (opt.accepted.item(), opt.rejected.item()) == counts, delta


def gram_problem(seed, n=4, m=6):
    """f(X) = ||X X^T / m - G||_F^2, a Gram matrix's squared error (quartic in X), as the style
    loss is; G is the Gram matrix of a random target. One sample: B = 1."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(n, m, generator=gen, dtype=torch.float64)
    gram = target @ target.T / m
    x0 = 0.3 * torch.randn(1, n, m, generator=gen, dtype=torch.float64)
    return (lambda b, xb: ((xb @ xb.T / m - gram) ** 2).sum()), x0


def test_a_step_that_blows_the_loss_up_is_taken_back():
    # The premise, from torch's L-BFGS without line search on a Gram loss: its 4th step,
    # from a pair over a short step, overshoots 50x, its 7th 1e6x, and after 30 steps it is
    # still at a tenth of the start.
    f, x0 = gram_problem(31)
    ref = [total_loss(f, x0)[0]] + [total_loss(f, x[None])[0] for x in _torch_path_one(f, x0, 30, 40)]
    assert max(b / a for a, b in zip(ref, ref[1:])) > 1e5 and ref[-1] > 0.05 * ref[0]
    # Without the losses the batched L-BFGS is torch's, blow-ups included (40 slots: the ring's
    # departure plays no part).
    assert_close(batched_path(f, x0, [1.0], 40, 30)[:, 0], torch.stack(_torch_path_one(f, x0, 30, 40)))
    # Given them, it takes the failed step back and converges (to the global minimum, 0).
    path = batched_path(f, x0, [1.0], 40, 30, losses=True)
    losses = [total_loss(f, x0)[0]] + [total_loss(f, x)[0] for x in path]
    assert losses[-1] < 1e-12 * losses[0]
    # Each blow-up is followed by a point below the one the failed step left: the step back
    # is the quadratic's minimum within [0.1, 0.5] of the failed step.
    for k in range(1, len(losses) - 1):
        if losses[k] > 2 * losses[k - 1]:
            assert losses[k + 1] < losses[k - 1]


def test_without_blow_ups_the_losses_change_nothing():
    # Samples 1 and 2 of the convex problem never rise by 2x on torch's path; sample 0 doubles
    # its loss at step 2 (59 -> 120), so it alone is taken back and leaves torch's path.
    f, x0 = make_problem()
    ref = torch_paths(f, x0, LRS, 5, 25)
    losses = torch.tensor([total_loss(f, x0)] + [total_loss(f, x) for x in ref])  # (steps + 1, B)
    assert ((losses[1:] / losses[:-1]).amax(0) > 2).tolist() == [True, False, False]
    got = batched_path(f, x0, LRS, 5, 25, losses=True)
    assert_close(got[:, 1:], ref[:, 1:])
    assert (got[2, 0] - ref[2, 0]).abs().max() > 1e-3


def _torch_path_one(f, x0, steps, m):
    xb = x0[0].clone().requires_grad_(True)
    opt = torch.optim.LBFGS([xb], lr=1.0, max_iter=1, history_size=m, line_search_fn=None,
                            tolerance_grad=0, tolerance_change=0)
    out = []

    def closure():
        opt.zero_grad()
        loss = f(0, xb)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
        out.append(xb.detach().clone())
    return out


def test_the_strong_wolfe_line_search_gets_its_evaluations_at_one_iteration_per_step():
    """optimizer.line_search=strong_wolfe with max_iter=1 (a harness step is one iteration): torch
    gives the line search max_eval - 1 evaluations, and its default max_eval is max_iter * 5 // 4 = 1,
    so where the full step t = 1 raises the loss the search returns t = 0, the iterate and the
    history stay as they are, and every later step repeats the same failed trial (the paper's recipe
    stalled so at step 10). On log cosh, whose secant steps overshoot, from x = 3: the minimum is 0."""
    from nstexp.config import LBFGSConfig
    from nstexp.optim.optimizers import build_optimizer

    x = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    opt = build_optimizer([x], LBFGSConfig(line_search="strong_wolfe"))

    def closure():
        opt.zero_grad()
        f = torch.log(torch.cosh(x)).sum()
        f.backward()
        return f

    losses = [float(opt.step(closure)) for _ in range(30)]
    assert losses[2] < losses[1]  # the third step moves (the second's full step overshoots to x = -29)
    assert float(torch.log(torch.cosh(x.detach())).sum()) < 1e-6
