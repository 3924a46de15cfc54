"""Plot the Tiny Focal Loss weight for several k, continuous and piecewise (the paper's figures).

    python experiments/plot_tfl.py --out runs/tfl/tfl_weights.png --k 0.6 1.6 3 --s 1024
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.plots import plot_tfl_curves  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/tfl/tfl_weights.png")
    p.add_argument("--k", type=float, nargs="+", default=[0.6, 1.0, 1.6, 3.0, 6.0])
    p.add_argument("--s", type=float, default=1024.0, help="tiny/big area S (px^2)")
    args = p.parse_args()
    print(plot_tfl_curves(args.out, tuple(args.k), args.s))


if __name__ == "__main__":
    main()
