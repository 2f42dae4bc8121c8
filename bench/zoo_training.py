"""Train the zoo's digit weights ahead of time (exports otherwise train them on first use).

    .venv/bin/python bench/zoo_training.py                 # every planned weight set
    .venv/bin/python bench/zoo_training.py --models squeezenet1_1 --out /tmp/weights
    .venv/bin/python bench/zoo_training.py --tasks                   # the detector and the segmenter

What is trained, on what and why: `exporter/zoo/digits.py` (the classifiers' digit weights) and
`exporter/zoo/task_training.py` (the detector and the segmenter, on digit scenes). Each set's steps, seconds
and held-out quality land in the trained.json next to its weights.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.zoo import digits, task_training  # noqa: E402


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(digits.TRAINING_PLANS), choices=list(digits.TRAINING_PLANS))
    parser.add_argument("--tasks", nargs="*", choices=list(task_training.PLANS),
                        help="train these task models (all of them when given alone) instead of the classifiers")
    parser.add_argument("--out", type=Path, help="folder for the weights and trained.json (default: "
                        f"{digits.WEIGHTS_DIR} for the sets stored there, else {digits.cache_dir()})")
    args = parser.parse_args()
    if args.tasks is not None:
        for name in args.tasks or list(task_training.PLANS):
            record = task_training.train_and_save(name, args.out)
            task_training.record_training(record, args.out)
            print(f"{name:<26} {record.steps} steps in {record.seconds:6.1f} s ({record.cpu_seconds:.1f} s CPU), "
                  f"held out: {record.held_out}, {record.weights_bytes / 1e6:.2f} MB", flush=True)
        return
    torch.set_num_threads(1)  # the machine is shared: one core, and CPU seconds are recorded
    for name in args.models:
        folder = args.out or digits.weights_dir_for(name)
        record = digits.train_and_save(name, folder)
        digits.record_training(record, folder)
        print(f"{name:<24} {record.steps} steps in {record.seconds:6.1f} s ({record.cpu_seconds:.1f} s CPU), "
              f"held-out accuracy {record.held_out_accuracy:.3f}, {record.weights_bytes / 1e6:.2f} MB", flush=True)


if __name__ == "__main__":
    main()
