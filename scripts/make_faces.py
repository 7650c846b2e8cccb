"""A small grey (or RGB) faces-like dataset, generated: a stand-in for the Frey Face images.

    python scripts/make_faces.py --out runs/faces/faces.npy              # uint8 (N, 28, 20)
    python scripts/make_faces.py --out runs/faces/test.npy --seed 1 --n 400
    python scripts/make_faces.py --out runs/faces-rgb --rgb --png --n 300   # a folder of PNGs

Each 28x20 image (the Frey Face size) is a head on a background, drawn from independent factors:
head position and size, skin and background brightness, a left-right lighting gradient, eye
openness, gaze, a smile or frown, and hair; edges are anti-aliased (a smooth step of a signed
distance), and every pixel gets a little Gaussian noise before the 8-bit quantisation.  The
pixels' variability differs from place to place (flat background, moving eyes and mouth), which
is what a decoder with a per-example, per-pixel variance can model and a fixed sigma cannot.
"""
import argparse
import os

import numpy as np

H, W = 28, 20


def _step(d, width=0.6):
    """Coverage of a pixel at signed distance d (negative inside): a smooth 0..1 edge."""
    return np.clip(0.5 - d / width, 0.0, 1.0)


def make_faces(n, seed=0, rgb=False):
    """uint8 (n, 28, 20) grey faces, or (n, 28, 20, 3) when rgb."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64) + 0.5
    out = np.empty((n, H, W, 3) if rgb else (n, H, W), np.uint8)
    for i in range(n):
        u = lambda a, b: rng.uniform(a, b)                      # noqa: E731
        cx, cy = W / 2 + u(-1.5, 1.5), H / 2 + u(-1.0, 1.5)
        rx, ry = u(6.5, 8.0), u(9.5, 11.5)
        skin, bg = u(0.55, 0.85), u(0.08, 0.3)
        light = u(-0.35, 0.35)
        background = bg * (1 + 0.3 * (xx / W - 0.5))
        head = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) - 1
        face = skin * (1 + light * (xx - cx) / rx) * (1 - 0.15 * ((yy - cy) / ry) ** 2)
        img = background + (face - background) * _step(head * min(rx, ry))
        hair = np.clip((cy - ry * u(0.45, 0.7) - yy) / 1.2 + 0.5, 0, 1) * _step(head * min(rx, ry))
        img = img * (1 - hair) + u(0.05, 0.25) * hair
        gaze, open_ = u(-0.8, 0.8), u(0.15, 1.0)
        for side in (-1, 1):
            ex, ey = cx + side * rx * 0.42, cy - ry * 0.18
            eye = np.sqrt(((xx - ex) / 1.6) ** 2 + ((yy - ey) / (1.1 * open_ + 0.1)) ** 2) - 1
            img = img * (1 - 0.55 * _step(eye * 1.2))
            pupil = np.hypot(xx - ex - gaze, yy - ey) - 0.7 * open_
            img = img * (1 - 0.6 * _step(pupil))
        smile = u(-0.12, 0.18)
        my = cy + ry * 0.5
        mouth_line = np.abs(yy - (my - smile * (xx - cx) ** 2)) - u(0.4, 0.9)
        mouth = _step(mouth_line) * (np.abs(xx - cx) < u(2.5, 4.0))
        img = img * (1 - 0.5 * mouth)
        nose = np.hypot((xx - cx) / 0.8, (yy - cy - ry * 0.15) / 2.0) - 1
        img = img * (1 - 0.12 * _step(nose) * np.sign(light + 1e-9) * (xx > cx))
        img = img + rng.normal(0, 0.02, img.shape)
        if rgb:
            tint = np.array([u(1.0, 1.15), u(0.8, 0.95), u(0.65, 0.85)])
            bgc = rng.dirichlet([2, 2, 2]) * 1.5
            inside = _step(head * min(rx, ry))[..., None]
            img = img[..., None] * (inside * tint + (1 - inside) * bgc)
        out[i] = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help=".npy file to write, or with --png a folder")
    p.add_argument("--n", type=int, default=2000, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="the generator's seed")
    p.add_argument("--rgb", action="store_true", help="colour images (N, 28, 20, 3)")
    p.add_argument("--png", action="store_true", help="write a folder of PNG files")
    a = p.parse_args()
    faces = make_faces(a.n, a.seed, a.rgb)
    if a.png:
        from PIL import Image
        os.makedirs(a.out, exist_ok=False)
        for i, img in enumerate(faces):
            Image.fromarray(img).save(os.path.join(a.out, f"face{i:05d}.png"))
    else:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        np.save(a.out, faces)
    print(f"{a.out}: {faces.shape} {faces.dtype}")


if __name__ == "__main__":
    main()
