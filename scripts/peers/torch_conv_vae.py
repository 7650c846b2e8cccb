"""PyTorch (eager, CPU) peer of minivae's convolutional VAE (``VAE(..., arch='conv')``).

Same architecture, initial weights, data and report as minivae's ``--arch conv`` with kernel 4,
stride 2 (padding (K - S) // 2 = 1), so scripts/bench.py and scripts/mnist_results.py can run
it side by side with minivae and compare epoch times and ELBOs from the same start:

    encoder  x (B, 784) -> (1, 28, 28) -> [Conv2d(c_i, c_{i+1}, K, S, P) -> act] per channel
             count -> flatten (c_L h w) -> dense hidden... (act) -> 2Z = (mu, logvar)
    decoder  z -> dense ...hidden (act) -> c_L h w (act) -> (c_L, h, w)
             -> [ConvTranspose2d -> act] for c_{L-1}..c_1 -> ConvTranspose2d(c_1, 1) -> 784 logits
    loss     summed BCE-with-logits + closed-form KL per example, mean over the batch; Adam.

Initial weights: minivae's ``VAE.reset_parameters`` order, re-drawn here with NumPy from
default_rng(seed): every layer in forward order (encoder convolutions, encoder dense, decoder
dense, decoder transposed convolutions), W then b, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) in float64
then cast to float32, with fan_in = W.shape[1] K K for convolutions (PyTorch's rule, also for
ConvTranspose2d's (C_in, C_out, K, K) weight) and Din for dense layers.  PyTorch's layouts
equal minivae's for both convolutions; a dense W is stored (Din, Dout) by minivae and
transposed into nn.Linear.  tests/test_bench_peers.py checks the weights against minivae's.

Options, data (--data synthetic|mnist) and the one JSON line on stdout are those of the MLP
peers (../shared/bench/vaecommon.py, imported from MINIVAE_PEER_DIR, PYTHONPATH or
../shared/bench beside the checkout), plus --channels C1,C2,.., --kernel, --stride.  The
model lives in the repository (not ../shared) so that it cannot be lost with the shared folder.

    ../shared/bench/.venv/bin/python scripts/peers/torch_conv_vae.py --epochs 2 \
        --arch 784-256-20 --channels 16,32
"""
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _import_vaecommon():
    try:
        import vaecommon
        return vaecommon
    except ImportError:
        pass
    for d in (os.environ.get("MINIVAE_PEER_DIR"),
              os.path.join(HERE, "..", "..", "..", "shared", "bench")):
        if d and os.path.exists(os.path.join(d, "vaecommon.py")):
            sys.path.insert(0, os.path.abspath(d))
            import vaecommon
            return vaecommon
    raise SystemExit("torch_conv_vae: vaecommon.py not found: set MINIVAE_PEER_DIR to the folder "
                     "of the MLP peers (../shared/bench)")


def conv_geometry(side, channels, K, S):
    """Padding (K - S) // 2 and the side after each convolution, checked exact (as ConvArch)."""
    P = max(0, (K - S) // 2)
    sides = [side]
    for _ in channels:
        span = sides[-1] + 2 * P - K
        if span < 0 or span % S:
            raise SystemExit(f"torch_conv_vae: a {side}x{side} image does not pass exactly "
                             f"through {len(channels)} convolutions (k{K} s{S} p{P})")
        sides.append(span // S + 1)
    return P, sides


def init_params(dims, channels, K, S, seed, side=28):
    """minivae's initial weights in its layouts, in its drawing order:
    [("conv", W (O, C, K, K), b), ("dense", W (Din, Dout), b), ..., ("convT", W (C, O, K, K), b)]."""
    rng = np.random.default_rng(seed)
    P, sides = conv_geometry(side, channels, K, S)
    flat = channels[-1] * sides[-1] ** 2
    hidden, Z = dims[1:-1], dims[-1]
    out = []

    def draw(kind, shape, fan_in):
        bound = 1.0 / np.sqrt(fan_in)
        W = rng.uniform(-bound, bound, shape).astype(np.float32)
        b = rng.uniform(-bound, bound, (shape[0] if kind == "conv" else shape[1],)
                        ).astype(np.float32)
        out.append((kind, W, b))

    chans = (1, *channels)
    for c, o in zip(chans[:-1], chans[1:]):
        draw("conv", (o, c, K, K), c * K * K)
    enc = (flat, *hidden, 2 * Z)
    for i, o in zip(enc[:-1], enc[1:]):
        draw("dense", (i, o), i)
    dec = (Z, *hidden[::-1], flat)
    for i, o in zip(dec[:-1], dec[1:]):
        draw("dense", (i, o), i)
    rch = (*channels[::-1], 1)
    for c, o in zip(rch[:-1], rch[1:]):
        draw("convT", (c, o, K, K), o * K * K)
    return out, P, sides


def build(torch, dims, channels, K, S, act_name, seed):
    nn = torch.nn
    params, P, sides = init_params(dims, channels, K, S, seed)
    act = nn.ReLU if act_name == "relu" else nn.Tanh
    hidden = dims[1:-1]
    n_conv, n_dense_enc = len(channels), len(hidden) + 1
    layers = []
    for kind, W, b in params:
        if kind == "conv":
            m = nn.Conv2d(W.shape[1], W.shape[0], K, S, P)
        elif kind == "convT":
            m = nn.ConvTranspose2d(W.shape[0], W.shape[1], K, S, P)
        else:
            m = nn.Linear(W.shape[0], W.shape[1])
            W = W.T
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(np.ascontiguousarray(W)))
            m.bias.copy_(torch.from_numpy(b))
        layers.append(m)
    convs, enc_dense = layers[:n_conv], layers[n_conv:n_conv + n_dense_enc]
    dec_dense = layers[n_conv + n_dense_enc:n_conv + 2 * n_dense_enc]
    convts = layers[n_conv + 2 * n_dense_enc:]
    h = sides[-1]

    enc = []
    for m in convs:
        enc += [m, act()]
    enc.append(nn.Flatten())
    for j, m in enumerate(enc_dense):
        enc += [m] + ([act()] if j < len(enc_dense) - 1 else [])
    dec = []
    for m in dec_dense:
        dec += [m, act()]                           # the last dense layer too (before the convT)
    dec.append(nn.Unflatten(1, (channels[-1], h, h)))
    for j, m in enumerate(convts):
        dec += [m] + ([act()] if j < len(convts) - 1 else [])
    dec.append(nn.Flatten())

    class ConvVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec = nn.Sequential(*enc), nn.Sequential(*dec)

        def encode(self, x):
            return self.enc(x.view(-1, 1, 28, 28)).chunk(2, dim=-1)

        def decode(self, z):
            return self.dec(z)
    return ConvVAE()


def main():
    vc = _import_vaecommon()
    p = vc.arg_parser("PyTorch eager, conv")
    p.add_argument("--channels", default="32,64", help="channels per convolution")
    p.add_argument("--kernel", type=int, default=4)
    p.add_argument("--stride", type=int, default=2)
    args = p.parse_args()
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dims = vc.parse_arch(args.arch)
    channels = [int(c) for c in args.channels.split(",")]
    data = vc.load_data(args)
    xtr, xte = torch.from_numpy(data.train), torch.from_numpy(data.test)
    model = build(torch, dims, channels, args.kernel, args.stride, args.act, args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    bs, steps = args.batch, len(xtr) // args.batch

    def neg_elbo_sum(x):
        mu, logvar = model.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        rec = F.binary_cross_entropy_with_logits(model.decode(z), x, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.square() - logvar.exp())
        return rec + kl

    @torch.no_grad()
    def test_elbo(batch=1000):
        total = sum(neg_elbo_sum(xte[i:i + batch]).item() for i in range(0, len(xte), batch))
        return -total / len(xte)

    epoch_s, test_elbos = [], []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(xtr))
        total = torch.zeros(())
        for s in range(steps):
            xb = xtr[perm[s * bs:(s + 1) * bs]]
            if data.binarize:
                xb = torch.bernoulli(xb)
            loss = neg_elbo_sum(xb) / bs
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        epoch_s.append(time.perf_counter() - t0)
        train_elbo = -total.item() / steps
        msg = f"epoch {epoch + 1}: {epoch_s[-1]:.3f} s, train ELBO {train_elbo:.3f}"
        if args.eval_each_epoch:
            test_elbos.append(round(test_elbo(), 4))
            msg += f", test ELBO {test_elbos[-1]:.3f}"
        vc.log(msg)
    extra = dict(channels=channels, kernel=args.kernel, stride=args.stride,
                 train_elbo=round(train_elbo, 4), test_elbo=round(test_elbo(), 4))
    if args.eval_each_epoch:
        extra["test_elbo_per_epoch"] = test_elbos
    vc.report(args, "torch-conv", torch.__version__, steps * bs, epoch_s, **extra)


if __name__ == "__main__":
    main()
