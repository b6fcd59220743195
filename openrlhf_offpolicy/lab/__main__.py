"""``python -m openrlhf_offpolicy.lab`` (``make lab``): the estimator bench and the mismatch lab on
their defaults, results under ``--out`` (default ``lab_results/``)."""

from __future__ import annotations

import argparse
import os

from . import estimators, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=" ".join(__doc__.split()),
        epilog="Each part has its own options: python -m openrlhf_offpolicy.lab.estimators --help, "
        "python -m openrlhf_offpolicy.lab.train --help.")
    parser.add_argument("--out", default="lab_results",
                        help="output folder: README.md plus estimators/ and train/ (default lab_results)")
    parser.add_argument("--skip-estimators", action="store_true",
                        help="skip the exact estimator bench (python -m openrlhf_offpolicy.lab.estimators)")
    parser.add_argument("--skip-train", action="store_true",
                        help="skip the mismatch lab (python -m openrlhf_offpolicy.lab.train)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    sections = []
    if not args.skip_estimators:
        print("== exact estimator bench (python -m openrlhf_offpolicy.lab.estimators)", flush=True)
        estimators.main(["--out", os.path.join(args.out, "estimators")])
        with open(os.path.join(args.out, "estimators", "estimators.md")) as f:
            sections.append("## Exact estimator bench\n\n" + f.read() + "\n![estimators](estimators/estimators.png)\n")
    if not args.skip_train:
        print("\n== mismatch lab (python -m openrlhf_offpolicy.lab.train)", flush=True)
        train.main(["--out", os.path.join(args.out, "train")])
        with open(os.path.join(args.out, "train", "summary.md")) as f:
            sections.append("## Mismatch lab\n\n" + f.read() + "\n![curves](train/curves.png)\n")
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("# CPU lab results\n\n" + "\n".join(sections))
    print(f"\nwrote {args.out}/README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
