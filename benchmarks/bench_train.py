"""Training throughput of each model: the Lightning module against a bare PyTorch loop.

    python -m benchmarks.bench_train [--steps 6] [--models UNet TemporalFusion Galileo …]
                                     [--cell_px 50]

Per model: subtiles per second at t=4 (200×200 pixels at the contest's 50 px per label cell;
`--cell_px 10` for the demo's and the tests' synthetic 160-px tiles), 99 channels,
batch 8, on the CPU, for `ESDSegmentation` under a Lightning Trainer (loss, torchmetrics
updates, optimiser) and for the same model, batches, loss and optimiser in a plain loop;
and the peak resident memory of each run (every run is its own process). `Galileo-frozen` is
Galileo with `freeze_backbone=1`; `Galileo-masked` is Galileo with a validity channel per
sensor and date (`valid_masks`; 5 % of the pixels without data, so every batch is masked), and
`Galileo-valid` the same where every pixel has data (a batch without no-data costs what it
costs without validity channels).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import lightning as L
import torch
from torch.utils.data import DataLoader

from src.esd_data.sensors import VALID_BAND, reference_channel_names
from src.models.registry import MODEL_TYPES
from src.training.losses import SegmentationLoss
from src.training.module import ESDSegmentation

CHANNELS, T, BATCH = 99, 4, 8
WARMUP = 2


def batches(count: int, cell_px: int, name: str) -> list[dict[str, torch.Tensor]]:
    """Fixed random batches for the benchmark model `name`, shaped like t=4 subtiles of
    `cell_px` px per label cell; a validity channel is 0 at its variant's share of pixels."""
    channels, no_data = channels_of(name), WITH_VALIDITY.get(name, 0.0)
    generator = torch.Generator().manual_seed(0)
    side = T * cell_px
    validity = [i for i, name in enumerate(channels) if name.endswith(f"/{VALID_BAND}")]
    data = []
    for _ in range(count):
        x = torch.randn(BATCH, len(channels), side, side, generator=generator)
        shape = (BATCH, len(validity), side, side)
        x[:, validity] = (torch.rand(shape, generator=generator) >= no_data).float()
        data.append({"X": x, "y": torch.randint(0, 4, (BATCH, T, T), generator=generator)})
    return data


SMALL_HPARAMS = {"SMP": {"smp_encoder": "resnet18"}}
"""Options that keep a model at the size the comparison uses (SMP: a ResNet-18 encoder)."""
VARIANTS = {
    "Galileo-frozen": ("Galileo", {"freeze_backbone": 1.0}),
    "Galileo-masked": ("Galileo", None),
    "Galileo-valid": ("Galileo", None),
}
"""Benchmark names for a model with options: Galileo with its whole encoder frozen (its speed
does not depend on whether the weights are pretrained, so no weights folder is needed), and
Galileo with validity channels."""
WITH_VALIDITY = {"Galileo-masked": 0.05, "Galileo-valid": 0.0}
"""The variants with validity channels, and the share of their pixels without data."""


def channels_of(name: str) -> list[str]:
    """The channel names a benchmark model reads (TemporalFusion and Galileo read sensors and
    dates): the contest's 99, and with validity channels one per sensor and date more."""
    channels = reference_channel_names()
    if name in WITH_VALIDITY:
        dates = dict.fromkeys(c.rsplit("/", 1)[0] for c in channels if "/max/" not in c)
        channels += [f"{date}/{VALID_BAND}" for date in dates]
    return channels


def build(name: str, cell_px: int) -> ESDSegmentation:
    torch.manual_seed(0)
    model_type, hparams = VARIANTS.get(name, (name, SMALL_HPARAMS.get(name)))
    channels = channels_of(name)
    return ESDSegmentation(
        model_type, channels, cell_px, T, model_hparams=hparams, scheduler="none"
    )


class _Timer(L.Callback):
    def __init__(self) -> None:
        self.start = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == WARMUP:
            self.start = time.perf_counter()


def run_lightning(model_type: str, steps: int, cell_px: int) -> float:
    data = batches(steps + WARMUP, cell_px, model_type)
    loader = DataLoader(data, batch_size=None, shuffle=False)
    timer = _Timer()
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps + WARMUP, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(build(model_type, cell_px), train_dataloaders=loader)
    return steps * BATCH / (time.perf_counter() - timer.start)


def run_bare(model_type: str, steps: int, cell_px: int) -> float:
    data = batches(steps + WARMUP, cell_px, model_type)
    model = build(model_type, cell_px).model.train()
    loss_fn = SegmentationLoss("ce")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    start = 0.0
    for index, batch in enumerate(data):
        if index == WARMUP:
            start = time.perf_counter()
        optimizer.zero_grad()
        loss = loss_fn(model(batch["X"]), batch["y"])
        loss.backward()
        optimizer.step()
    return steps * BATCH / (time.perf_counter() - start)


def one(model_type: str, mode: str, steps: int, cell_px: int) -> None:
    """Run one measurement in this process and print it as JSON."""
    torch.set_num_threads(2)
    rate = (run_lightning if mode == "lightning" else run_bare)(model_type, steps, cell_px)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    parameters = sum(p.numel() for p in build(model_type, cell_px).model.parameters())
    print(json.dumps({"rate": rate, "peak_mib": peak_mib, "parameters": parameters}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--models", nargs="+", default=[*MODEL_TYPES, *VARIANTS])
    parser.add_argument("--cell_px", type=int, default=50, help="pixels per label cell")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(*args.one, args.steps, args.cell_px)
        return
    side = T * args.cell_px
    print(
        f"t={T} ({side}×{side} px, {args.cell_px} px per cell), {CHANNELS} channels "
        f"({len(channels_of('Galileo-masked'))} with validity channels), batch {BATCH}, CPU, "
        f"{args.steps} timed steps after {WARMUP} warm-up steps"
    )
    print(
        f"{'model':<18} {'parameters':>11} {'bare loop':>14} {'Lightning':>14} {'s/step':>7} "
        f"{'overhead':>9} {'peak bare':>10} {'peak Lightning':>15}"
    )
    for model_type in args.models:
        result = {}
        for mode in ("bare", "lightning"):
            output = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_train", "--steps", str(args.steps),
                 "--cell_px", str(args.cell_px), "--one", model_type, mode],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            result[mode] = json.loads(output.strip().splitlines()[-1])
        bare, lightning = result["bare"], result["lightning"]
        overhead = 100 * (bare["rate"] / lightning["rate"] - 1)
        print(
            f"{model_type:<18} {bare['parameters'] / 1e6:>9.2f} M {bare['rate']:>9.1f} st/s "
            f"{lightning['rate']:>9.1f} st/s {BATCH / lightning['rate']:>7.2f} {overhead:>8.1f}% "
            f"{bare['peak_mib']:>7.0f} MiB {lightning['peak_mib']:>11.0f} MiB"
        )


if __name__ == "__main__":
    main()
