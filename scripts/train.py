#!/usr/bin/env python3
"""Train a 3-D U-Net segmentation model and export it as TorchScript beside its model card.

Data: generated CT phantoms (default; seeds --first-seed .. +--phantoms), a folder of NIfTI
image/label pairs (NAME_image.nii.gz + NAME_label.nii.gz) with --data, or a folder of case
folders, each a DICOM series with a DICOM SEG whose segment labels name the card's labels, with
--dicom. Preprocessing is the
model card's, so training sees exactly what inference will. Fixed seed, checkpoints every
--checkpoint-every steps in --out (an interrupted run resumes), a progress bar.

    .venv/bin/python scripts/train.py --out ai/models/ct-organs --steps 3000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ai.training import TrainConfig, export_torchscript, nifti_cases, phantom_cases, prepare, train, write_json  # noqa: E402


def _class_values(pairs: list[str]) -> dict[int, float] | None:
    """``["6=10", "7=10"]`` -> ``{6: 10.0, 7: 10.0}``."""
    values = {}
    for pair in pairs:
        cls, _, value = pair.partition("=")
        values[int(cls)] = float(value)
    return values or None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="model folder (holds card.yaml; gets model.ts)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--phantoms", type=int, default=40)
    parser.add_argument("--first-seed", type=int, default=1000)
    parser.add_argument("--phantom-shape", type=int, nargs=3, default=(150, 176, 176))
    parser.add_argument("--data", type=Path, help="folder of NIfTI image/label pairs instead of phantoms")
    parser.add_argument("--dicom", type=Path, help="folder of case folders (a DICOM series + its SEG) instead of phantoms")
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--class-weight", action="append", default=[], metavar="CLASS=W",
                        help="cross-entropy weight of a class (repeatable; background 0.5, others 1 by default)")
    parser.add_argument("--focus", action="append", default=[], metavar="CLASS=W",
                        help="odds of a class as the centre of a focused patch (repeatable; 1 by default)")
    parser.add_argument("--init", type=Path, help="start from the weights of an earlier stage's checkpoint.pt")
    parser.add_argument("--run-dir", type=Path, help="checkpoints of this run (default: OUT/checkpoints)")
    parser.add_argument("--norm", choices=("batch", "none"), default="batch")
    parser.add_argument("--freeze-norm-at", type=float, default=0.75,
                        help="fraction of the steps after which batch-norm statistics are recomputed and frozen")
    args = parser.parse_args()

    card = yaml.safe_load((args.out / "card.yaml").read_text())
    steps = card["preprocessing"]
    classes = 1 + max(int(label["value"]) for label in card["labels"])
    started = time.time()
    if args.data:
        cases = list(nifti_cases(args.data, steps))
        source = f"NIfTI pairs in {args.data}"
    elif args.dicom:
        from dicom_node.tools.training_data import dicom_seg_cases

        values = {label["name"]: int(label["value"]) for label in card["labels"]}
        cases = [prepare(volume, labels, steps) for volume, labels in dicom_seg_cases(args.dicom, values)]
        source = f"DICOM series with SEG labels in {args.dicom}"
    else:
        seeds = list(range(args.first_seed, args.first_seed + args.phantoms))
        cases = list(phantom_cases(seeds, steps, shape=tuple(args.phantom_shape)))
        source = f"phantoms seeds {seeds[0]}-{seeds[-1]}, shape {tuple(args.phantom_shape)} at 2 mm"
    if not cases:
        print("no training cases found", file=sys.stderr)
        return 2
    print(f"{len(cases)} cases ({source}) prepared in {time.time() - started:.0f} s")

    config = TrainConfig(steps=args.steps, batch=args.batch, patch=args.patch, lr=args.lr, seed=args.seed,
                         classes=classes, checkpoint_every=args.checkpoint_every, threads=args.threads,
                         norm=args.norm, freeze_norm_at=args.freeze_norm_at,
                         class_weights=_class_values(args.class_weight), focus_weights=_class_values(args.focus))
    init = torch.load(args.init, weights_only=False)["model"] if args.init else None
    run_dir = args.run_dir or args.out / "checkpoints"
    losses: list[float] = []
    with Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"),
                  TimeElapsedColumn(), TimeRemainingColumn()) as progress:
        task = progress.add_task("train", total=config.steps, loss=float("nan"))

        def on_step(step: int, loss: float) -> None:
            losses.append(loss)
            recent = losses[-50:]
            progress.update(task, completed=step, loss=sum(recent) / len(recent))

        model = train(cases, config, run_dir, on_step=on_step, init=init)
    export_torchscript(model, args.out / card.get("weights", "model.ts"), patch=args.patch)
    record_path = args.out / "training.json"
    if not losses:
        # The checkpoint had already reached --steps: the weights were only exported again.
        print(f"{run_dir / 'checkpoint.pt'} had already reached {config.steps} steps; exported it")
    else:
        stage = {
            "source": source, "cases": len(cases), "steps": config.steps, "batch": config.batch, "patch": config.patch,
            "lr": config.lr, "seed": config.seed, "features": list(config.features), "norm": config.norm,
            "freeze_norm_at": config.freeze_norm_at if config.norm == "batch" else None,
            "class_weights": config.class_weights, "focus_weights": config.focus_weights,
            "init": str(args.init) if args.init else None,
            "final_loss_mean_last_100": sum(losses[-100:]) / max(1, len(losses[-100:])),
            "seconds": round(time.time() - started), "command": " ".join(sys.argv),
        }
        # A stage that starts from an earlier one's weights adds to that record; a new run replaces it.
        earlier = json.loads(record_path.read_text()).get("stages", []) if args.init and record_path.exists() else []
        write_json(record_path, {"stages": [*earlier, stage]})
    print(f"wrote {args.out / card.get('weights', 'model.ts')} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
