"""Supervised continual benchmarks: training examples/s of each benchmark's step (backprop vs CBP).

permuted MNIST: the paper's 3x2000 net, one example per step, on the embedded MNIST subset;
continual ImageNet: the paper's ConvNet, minibatches of 100, on the embedded digit pairs;
incremental CIFAR-100: ResNet-18 (width 64 unless --width), minibatches of 90 with augmentation, on
random images in CIFAR's shape (no data set needed: speed does not depend on the pixels).
Set-up and a warm-up are excluded from the timings.
"""

from __future__ import annotations

import time
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--learners", default="bp,cbp", help="comma-separated: bp and/or cbp (default bp,cbp)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--mnist-examples", type=int, default=500, help="examples timed on permuted MNIST")
    parser.add_argument("--imagenet-epochs", type=int, default=1, help="epochs (800 images each) timed")
    parser.add_argument("--cifar-batches", type=int, default=3, help="minibatches of 90 timed on CIFAR")
    parser.add_argument("--width", type=int, default=64, help="ResNet-18 width (64 is the standard net)")


def _configs() -> Path:
    return Path(__file__).resolve().parents[2] / "configs"


class _NoLogs:
    def per_seed(self, *a):
        pass

    def scalars(self, *a):
        pass


def _cfg(problem: str, learner: str, overrides: list[str]) -> dict:
    from rl_plasticity.config import read_yaml
    from rl_plasticity.problems import resolve_config

    name = {"incremental_cifar": {"bp": "base"}}.get(problem, {}).get(learner, learner)
    return resolve_config(read_yaml(_configs() / problem / f"{name}.yaml"), overrides)[0]


def _timed(advance, units: int, examples_per_unit: int, sync) -> float:
    advance()  # warm-up: first-call allocations
    sync()
    start = time.perf_counter()
    for _ in range(units):
        advance()
    sync()
    return units * examples_per_unit / (time.perf_counter() - start)


def run(args) -> dict:
    import numpy as np
    import torch

    from rl_plasticity.problems.continual_imagenet import (
        ContinualImageNetRun,
        load_classes,
    )
    from rl_plasticity.problems.incremental_cifar import IncrementalCifarRun
    from rl_plasticity.problems.permuted_mnist import PermutedMNISTRun

    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    device = [f"device={args.device}"]
    rng = np.random.default_rng(0)
    cifar = {split: (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), np.arange(n) % 100)
             for split, n in (("train", 6000), ("test", 200))}
    figures = {}
    for learner in args.learners.split(","):
        chunk = max(1, args.mnist_examples // 2)
        pm = PermutedMNISTRun(_cfg("permuted_mnist", learner, [*device, f"log.chunk={chunk}"]), [0])
        rate = _timed(lambda: pm.advance(_NoLogs()), 2, chunk, sync)
        figures[f"permuted_mnist_{learner}_examples_per_s"] = round(rate, 1)
        print(f"permuted MNIST       {learner:>4}: {rate:>9,.1f} examples/s (3x2000 MLP, 1 example per step)")

        cfg = _cfg("continual_imagenet", learner, device)
        ci = ContinualImageNetRun(cfg, 0, load_classes(cfg))
        rate = _timed(lambda: ci.advance(_NoLogs()), args.imagenet_epochs, len(ci.train_y), sync)
        figures[f"continual_imagenet_{learner}_examples_per_s"] = round(rate, 1)
        print(f"continual ImageNet   {learner:>4}: {rate:>9,.1f} examples/s (ConvNet, minibatch 100)")

        cfg = _cfg("incremental_cifar", learner, [*device, "data.path=.", f"net.width={args.width}"])
        ic = IncrementalCifarRun(cfg, 0, cifar)
        batch = cfg["batch_size"]
        ic.train_x, ic.train_y = ic.train_x[: batch * args.cifar_batches], ic.train_y[: batch * args.cifar_batches]
        rate = _timed(lambda: ic.advance(_NoLogs()), 1, len(ic.train_y), sync)  # an epoch = the timed batches
        figures[f"incremental_cifar_{learner}_examples_per_s"] = round(rate, 1)
        print(f"incremental CIFAR    {learner:>4}: {rate:>9,.1f} examples/s (ResNet-18 width {args.width}, "
              f"minibatch {batch}, augmented)")
    return figures
