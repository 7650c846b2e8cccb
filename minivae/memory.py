"""How much memory a training run will need, estimated before anything is allocated, and how
much the machine has; `minivae train` refuses a run that cannot fit (issue 10: --hidden 1000000
ran to 24 GB and was killed by the kernel without a word).

The estimate, in bytes, with P parameters, itemsize b (4 for float32), D pixels, hidden widths
H_1..H_L, latent Z, S samples per example:

    parameters, gradients        2 P b
    optimiser state              P b per state array (Adam m and v: 2; SGD with momentum: 1)
    checkpoint                   P b (the transient copy a finiteness check or a write makes)
    data                         N D 4 (float32 images of every split)
    workspace                    the largest of
                                   training   B S (8 sum H + 4 D + 5 Z) b  (each layer of the
                                              encoder and decoder: pre-activation, output and
                                              their gradients; the batch, logits, their
                                              gradient; noise, z, mu, log-variance)
                                   evaluation E (4 sum H + 2 D + 5 Z) b  (forward only, E rows)
                                   importance R (2 sum H + 2 D) b  (the decoder on R rows)

It is a planning figure, not an accounting: it counts the arrays that scale with the sizes a user
picks, not the interpreter and libraries (about 150 MB) nor allocator slack.
scripts/memory_estimate.py compares it with the peak resident memory of real runs.
"""
import os

from .errors import MinivaeError

MARGIN = 256 << 20            # the interpreter, NumPy, Numba, matplotlib: not in the estimate


def estimate(data_dim, hidden, latent_dim, itemsize=4, optimizer="adam", batch_size=128,
             samples=1, eval_batch=1000, rows=0, n_images=0, likelihood_params=0):
    """{part: bytes} of a training run (see the module docstring); no array is made."""
    D, Z, H = int(data_dim), int(latent_dim), [int(h) for h in hidden]
    P = parameter_count(D, H, Z) + int(likelihood_params)
    states = {"adam": 2, "sgd": 1}.get(optimizer, 2)
    h = sum(H)
    work = max(int(batch_size) * int(samples) * (8 * h + 4 * D + 5 * Z),
               int(eval_batch) * (4 * h + 2 * D + 5 * Z), int(rows) * (2 * h + 2 * D))
    return {"parameters": 2 * P * itemsize, "optimiser": states * P * itemsize,
            "checkpoint": P * itemsize, "data": int(n_images) * D * 4,
            "workspace": work * itemsize}


def parameter_count(data_dim, hidden, latent_dim):
    """Weights and biases of the MLP encoder D -> H.. -> 2Z and decoder Z -> ..H -> D."""
    enc = [int(data_dim), *map(int, hidden), 2 * int(latent_dim)]
    dec = [int(latent_dim), *map(int, hidden[::-1]), int(data_dim)]
    return sum(a * b + b for w in (enc, dec) for a, b in zip(w[:-1], w[1:]))


def available():
    """Bytes this process may still allocate: MemAvailable, lowered to the cgroup's room when
    it has a limit; None where neither can be read (then nothing is refused)."""
    room = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    room.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit) as f:
                text = f.read().strip()
            if text == "max":
                continue
            with open(usage) as f:
                used = int(f.read().strip())
            lim = int(text)
            if lim < 1 << 60:                      # cgroup v1 says "no limit" with ~2^63
                room.append(max(lim - used, 0))
        except (OSError, ValueError):
            continue
    return min(room) if room else None


def _gb(n):
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def check(parts, have, where="memory", override="--no-memory-check"):
    """Raise a one-line MinivaeError when sum(parts) + MARGIN exceeds have (bytes; None: pass)."""
    need = sum(parts.values())
    if have is None or need + MARGIN <= have:
        return need
    largest = ", ".join(f"{k} {_gb(v)}" for k, v in
                        sorted(parts.items(), key=lambda kv: -kv[1]) if v >= need / 20)
    raise MinivaeError(f"this run needs about {_gb(need)} of {where} ({largest}; and "
                       f"~{_gb(MARGIN)} for Python and its libraries) but {_gb(have)} is "
                       f"available; choose smaller sizes (--hidden, --batch-size, "
                       f"--valid-size, --k), or pass {override} if you know it fits")


def device_available(xp):
    """Free bytes on xp's device (CuPy), None for NumPy or when it cannot be asked."""
    if xp.__name__ == "numpy":
        return None
    try:
        return int(xp.cuda.Device().mem_info[0])
    except Exception:                               # noqa: BLE001 - a driver without queries
        return None


def dataset_images(name, valid_size, shapes_counts):
    """The number of images a built-in dataset holds in all (None: not known before loading)."""
    fixed = {"mnist": 70000, "fashion-mnist": 70000, "binarized-mnist": 70000}
    if name == "shapes":
        return sum(shapes_counts) + int(valid_size or 0)
    return fixed.get(name)
