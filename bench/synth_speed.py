"""Speed of the synthetic benchmark generator, files included.

Runs ``generate_benchmark`` on a temporary folder (source, target train and target val, as
``crossregion data synth`` does). The generator is single-threaded, so the headline figure is
images per CPU-second of this process, i.e. per core; it does not drop when other jobs share
the machine. The wall-clock rate is printed too. The last line is the headline figure:

    python bench/synth_speed.py --images 60 --height 128 --width 256
    ...
    synth_speed 85.3 img/s
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from crossregion.synth.benchmark import generate_benchmark


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60, help="images in all (half source, half target)")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.images < 4:
        print("synth_speed: need --images >= 4 to measure", file=sys.stderr)
        return 1
    source = args.images // 2
    target_train = (args.images - source) * 2 // 3
    target_val = args.images - source - target_train
    with tempfile.TemporaryDirectory() as out_dir:
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        generate_benchmark(
            out_dir,
            source_images=source,
            target_train_images=target_train,
            target_val_images=target_val,
            height=args.height,
            width=args.width,
            seed=args.seed,
        )
        wall = time.perf_counter() - start_wall
        cpu = time.process_time() - start_cpu
    if wall <= 0 or cpu <= 0:
        print("synth_speed: clock did not advance; cannot measure", file=sys.stderr)
        return 1
    print(
        f"{args.images} images ({source} source, {target_train}+{target_val} target) "
        f"at {args.height}x{args.width}: {wall:.2f} s wall ({args.images / wall:.1f} img/s), {cpu:.2f} s CPU"
    )
    print(f"synth_speed {args.images / cpu:.1f} img/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
