"""Writes ``docs/images/synth_samples.png``: a source and a target image with their labels.

python bench/synth_samples.py [--out docs/images/synth_samples.png]
"""

from __future__ import annotations

import argparse
import sys

from crossregion.synth.benchmark import save_sample_figure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images/synth_samples.png")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    save_sample_figure(args.out, height=args.height, width=args.width, seed=args.seed)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
