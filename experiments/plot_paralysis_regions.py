"""Draws the 12 paralysis muscle-region centres and their attention maps on a sample aligned face.

    python -m experiments.plot_paralysis_regions [--out docs/paralysis_regions.png] [--sample 0]

Uses the aligned BP4D sample of ``tests/fixtures/jaanet_samples`` (200x200, landmarks in
``aligned_land_49.txt``), takes the centre crop (176 at offset 12) as the test pipeline does, and renders
``regions.paralysis_centres`` / ``regions.attention_maps`` with the fixed scale 0.14 (M = 52). Left: centres
(labelled) and the 49 landmarks; right: the maximum over the 12 maps, upsampled to the crop.
"""
from __future__ import annotations

import argparse
import pathlib

import jax.numpy as jnp
import matplotlib
import numpy as np
from PIL import Image

from algrnet_jax.models import regions

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the Agg backend)

ROOT = pathlib.Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "fixtures" / "jaanet_samples"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "paralysis_regions.png"))
    parser.add_argument("--sample", type=int, default=0, help="row of aligned_land_49.txt (0 or 1)")
    args = parser.parse_args(argv)

    images = sorted(SAMPLES.glob("aligned_*.jpg"))
    land_file = SAMPLES / "aligned_land_49.txt"
    if not images or not land_file.exists():
        raise SystemExit(f"{SAMPLES}: aligned sample images / aligned_land_49.txt not found")
    rows = np.loadtxt(land_file, ndmin=2)
    if not 0 <= args.sample < min(len(rows), len(images)):
        raise SystemExit(f"--sample must be in 0..{min(len(rows), len(images)) - 1}")
    crop, offset = 176, 12
    image = np.asarray(Image.open(images[args.sample]).convert("RGB"))[offset:offset + crop, offset:offset + crop]
    land = rows[args.sample].reshape(49, 2).astype(np.float32) - offset

    centres = regions.paralysis_centres(jnp.asarray(land)[None])           # [1, 12, 2, 2]
    map_size = crop // 4 + 8
    maps = np.asarray(regions.attention_maps(centres, 0.14, map_size, crop))[0]  # [12, M, M]
    pts = np.asarray(centres)[0, :, 0]
    names = [r.name for r in regions.PARALYSIS_REGIONS]

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2))
    axes[0].imshow(image)
    axes[0].scatter(land[:, 0], land[:, 1], s=6, c="cyan")
    axes[0].scatter(pts[:, 0], pts[:, 1], s=40, c="red", marker="x")
    for (x, y), name in zip(pts, names):
        axes[0].annotate(name, (x, y), xytext=(3, -3), textcoords="offset points", fontsize=7, color="yellow")
    axes[0].set_title("12 muscle-region centres (image left/right)")
    # Map pixel (h, w) sits at crop pixel (h, w) / s, s = M / crop; show the M x M map over the crop.
    extent = (-0.5 * crop / map_size, (map_size - 0.5) * crop / map_size,
              (map_size - 0.5) * crop / map_size, -0.5 * crop / map_size)
    axes[1].imshow(image)
    axes[1].imshow(np.ma.masked_equal(maps.max(0), 0.0), cmap="jet", alpha=0.5, extent=extent, vmin=0, vmax=1)
    axes[1].set_xlim(0, crop)
    axes[1].set_ylim(crop, 0)
    axes[1].set_title(f"max of the 12 attention maps (M = {map_size}, e = 0.14)")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
