"""Supervised continual benchmarks: data formats on tiny generated files, bad data, runs, resume."""

import gzip
import json
import os
import pickle
import signal
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from rl_plasticity.cli import main
from rl_plasticity.config import read_yaml
from rl_plasticity.datasets.cifar100 import load_cifar100
from rl_plasticity.datasets.imagenet32 import load_imagenet32
from rl_plasticity.datasets.mnist import load_mnist, read_idx
from rl_plasticity.datasets.transforms import mnist_to_rgb32, random_crop_flip
from rl_plasticity.errors import UserError
from rl_plasticity.problems import continual_imagenet, incremental_cifar, permuted_mnist, resolve_config
from rl_plasticity.run.checkpoint import latest_checkpoint, list_checkpoints
from rl_plasticity.run.loop import train_loop
from rl_plasticity.run.tblog import SeedLogs, read_scalars

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- tiny files in every format


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def mnist_arrays(n=60):
    return RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10


def write_mnist_idx(folder: Path, gz: bool) -> tuple[np.ndarray, np.ndarray]:
    x, y = mnist_arrays()
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in (("train-images-idx3-ubyte", x), ("train-labels-idx1-ubyte", y)):
        data = idx_bytes(arr)
        (folder / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
    return x, y


def write_imagenet_npy(folder: Path, classes=4, per_class=12) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for c in range(classes):
        out[c] = RNG.integers(0, 256, (per_class, 32, 32, 3), dtype=np.uint8)
        np.save(folder / f"{c}.npy", out[c])
    return out


def write_imagenet_batches(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    data = RNG.integers(0, 256, (30, 3072), dtype=np.uint8)
    labels = np.arange(30) % 3 + 1  # 1-based, as in the official files
    np.savez(folder / "train_data_batch_1.npz", data=data[:20], labels=labels[:20])
    np.savez(folder / "val_data.npz", data=data[20:], labels=labels[20:])
    return data, labels


def write_cifar100(folder: Path, train_per_class=2, test_per_class=1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, per in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(100), per)
        d = {b"data": RNG.integers(0, 256, (len(labels), 3072), dtype=np.uint8), b"fine_labels": labels.tolist(),
             b"coarse_labels": (labels // 5).tolist(), b"filenames": [b"x.png"] * len(labels)}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [b"c%d" % i for i in range(100)]}, f)
    return folder


# --------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_files(tmp_path, gz):
    x, y = write_mnist_idx(tmp_path / "mnist", gz)
    assert np.array_equal(read_idx(tmp_path / "mnist" / ("train-labels-idx1-ubyte" + (".gz" if gz else ""))), y)
    images, labels = load_mnist(tmp_path / "mnist")
    assert np.array_equal(images, x) and np.array_equal(labels, y) and labels.dtype == np.int64


def test_mnist_from_npz(tmp_path):
    x, y = mnist_arrays()
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    images, labels = load_mnist(tmp_path / "mnist.npz")
    assert np.array_equal(images, x) and np.array_equal(labels, y)


def test_bad_mnist_paths_say_what_was_expected(tmp_path):
    with pytest.raises(UserError, match="does not exist.*train-images-idx3-ubyte.*x_train"):
        load_mnist(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not in a supported format"):
        load_mnist(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train-images-idx3-ubyte").write_bytes(b"\x12\x34\x56\x78rubbish")
    (bad / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3)))
    with pytest.raises(UserError, match="not an IDX file"):
        load_mnist(bad)
    (bad / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((3, 28, 28)))[:-10])
    with pytest.raises(UserError, match="truncated|data bytes"):
        load_mnist(bad)
    np.savez(tmp_path / "wrong.npz", images=np.zeros((2, 28, 28)))
    with pytest.raises(UserError, match="expected x_train and y_train"):
        load_mnist(tmp_path / "wrong.npz")


def test_imagenet_per_class_npy(tmp_path):
    written = write_imagenet_npy(tmp_path / "in32", classes=3, per_class=5)
    classes = load_imagenet32(tmp_path / "in32", per_class=4)
    assert sorted(classes) == [0, 1, 2] and all(np.array_equal(classes[c], written[c][:4]) for c in classes)


def test_imagenet_official_batches_are_channel_major_and_one_based(tmp_path):
    data, labels = write_imagenet_batches(tmp_path / "in32")
    classes = load_imagenet32(tmp_path / "in32")
    assert sorted(classes) == [0, 1, 2] and all(len(x) == 10 for x in classes.values())
    first_of_class_1 = data[labels == 2][0]  # label 2 in the file is class 1
    img = classes[1][0]
    assert img.shape == (32, 32, 3)
    r, c = 5, 7
    assert [img[r, c, k] for k in range(3)] == [first_of_class_1[k * 1024 + r * 32 + c] for k in range(3)]
    assert len(load_imagenet32(tmp_path / "in32", per_class=3)[0]) == 3


def test_bad_imagenet_data(tmp_path):
    with pytest.raises(UserError, match="does not exist.*<class_index>.npy.*train_data_batch"):
        load_imagenet32(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no down-sampled ImageNet data"):
        load_imagenet32(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    np.save(tmp_path / "bad" / "0.npy", np.zeros((2, 28, 28), dtype=np.uint8))
    with pytest.raises(UserError, match=r"expected uint8 \[N, 32, 32, 3\]"):
        load_imagenet32(tmp_path / "bad")


def test_cifar100_pickles(tmp_path):
    root = write_cifar100(tmp_path / "cifar-100-python")
    data = load_cifar100(root)
    x, y = data["train"]
    assert x.shape == (200, 3, 32, 32) and x.dtype == np.uint8 and sorted(set(y.tolist())) == list(range(100))
    assert data["test"][0].shape == (100, 3, 32, 32)


def test_cifar100_refuses_objects_and_missing_files(tmp_path):
    with pytest.raises(UserError, match="does not exist.*train, test and meta"):
        load_cifar100(tmp_path / "nowhere")
    root = write_cifar100(tmp_path / "c")
    (root / "meta").unlink()
    with pytest.raises(UserError, match="lacks meta"):
        load_cifar100(root)
    root = write_cifar100(tmp_path / "evil")
    with open(root / "train", "wb") as f:
        pickle.dump({b"data": os.getcwd, b"fine_labels": []}, f)  # a pickle that names a function
    with pytest.raises(UserError, match="refusing to load"):
        load_cifar100(root)


def test_crop_and_flip_by_hand():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    outs = {tuple(random_crop_flip(x, torch.Generator().manual_seed(s), padding=1).flatten().tolist())
            for s in range(60)}
    assert tuple(x.flatten().tolist()) in outs  # no shift, no flip
    assert tuple(x.flip(3).flatten().tolist()) in outs  # flip only
    shifted = torch.nn.functional.pad(x, (1, 1, 1, 1))[:, :, 2:6, 0:4]  # down 1, right 1
    assert tuple(shifted.flatten().tolist()) in outs
    assert len(outs) == 18  # 9 offsets x 2 flips, all reached
    digits = mnist_to_rgb32(torch.full((2, 28, 28), 7, dtype=torch.uint8))
    assert digits.shape == (2, 32, 32, 3) and digits[0, 0, 0, 0] == 0 and digits[0, 2, 2, 2] == 7


# --------------------------------------------------------------------------- runs


def cfg_of(problem: str, learner: str, *overrides):
    cfg, _ = resolve_config(read_yaml(ROOT / "configs" / problem / f"{learner}.yaml"), list(overrides))
    return cfg


class _NoLogs:
    def per_seed(self, *a):
        pass

    def scalars(self, *a):
        pass


def test_permuted_mnist_batched_seed_equals_seed_alone(tmp_path):
    x, y = mnist_arrays(100)
    np.savez(tmp_path / "m.npz", x_train=x, y_train=y)
    cfg = cfg_of("permuted_mnist", "cbp", f"data.path={tmp_path / 'm.npz'}", "tasks=2", "examples_per_task=80",
                 "net.hidden=[16, 16]", "cbp.replacement_rate=0.05", "cbp.maturity_threshold=5", "log.chunk=30",
                 "log.probe_size=20")
    together = permuted_mnist.PermutedMNISTRun(cfg, [0, 1])
    alone = permuted_mnist.PermutedMNISTRun(cfg, [1])
    while not together.done():
        together.advance(_NoLogs())
        alone.advance(_NoLogs())
    assert together.learner.methods[0].replacements[0][1] > 0
    assert [a[1] for a in together.accuracies] == [a[0] for a in alone.accuracies]
    for p, q in zip(together.net.parameters(), alone.net.parameters()):
        assert torch.allclose(p[1], q[0], atol=1e-6)


class _StopAfter:
    """Wraps a run state: raises SIGINT (as Ctrl-C would) after `n` units, so train_loop stops early."""

    def __init__(self, state, n):
        self.state, self.n = state, n

    def __getattr__(self, name):
        return getattr(self.state, name)

    def advance(self, logs, bar=None):
        self.state.advance(logs, bar)
        self.n -= 1
        if self.n == 0:
            os.kill(os.getpid(), signal.SIGINT)


def _resume_matches(tmp_path, make_state, stop_after, seeds=(0,)):
    straight, stopped = make_state(), make_state()
    assert train_loop(straight, tmp_path / "a", False, partial(SeedLogs, tmp_path / "a", list(seeds)), "test", "unit")
    assert not train_loop(_StopAfter(stopped, stop_after), tmp_path / "b", False,
                          partial(SeedLogs, tmp_path / "b", list(seeds)), "test", "unit")
    assert list_checkpoints(tmp_path / "b")
    resumed = make_state()
    assert train_loop(resumed, tmp_path / "b", True, partial(SeedLogs, tmp_path / "b", list(seeds)), "test", "unit")
    assert resumed.accuracies == straight.accuracies
    for p, q in zip(resumed.net.parameters(), straight.net.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(resumed.net.buffers(), straight.net.buffers()):
        assert torch.equal(p, q)
    return straight, resumed


def test_permuted_mnist_resume_mid_task_equals_uninterrupted(tmp_path):
    x, y = mnist_arrays(100)
    np.savez(tmp_path / "m.npz", x_train=x, y_train=y)
    cfg = cfg_of("permuted_mnist", "cbp", f"data.path={tmp_path / 'm.npz'}", "tasks=3", "examples_per_task=60",
                 "net.hidden=[16]", "cbp.replacement_rate=0.05", "cbp.maturity_threshold=5", "log.chunk=25",
                 "log.probe_size=20")
    _resume_matches(tmp_path, lambda: permuted_mnist.PermutedMNISTRun(cfg, [0, 1]), stop_after=4, seeds=(0, 1))
    tags = read_scalars(tmp_path / "b" / "tb" / "seed_1")
    assert [s for s, _ in tags["charts/task_accuracy"]] == [60, 120, 180]  # no duplicates after the resume


def test_continual_imagenet_resume_mid_task_equals_uninterrupted(tmp_path):
    write_imagenet_npy(tmp_path / "in32", classes=4, per_class=12)
    cfg = cfg_of("continual_imagenet", "cbp", f"data.path={tmp_path / 'in32'}", "data.train_per_class=8",
                 "data.test_per_class=4", "tasks=3", "epochs_per_task=2", "batch_size=5", "net.channels=[4, 4, 8]",
                 "net.hidden=[8, 8]", "cbp.replacement_rate=0.1", "cbp.maturity_threshold=2")
    classes = continual_imagenet.load_classes(cfg)
    straight, _ = _resume_matches(
        tmp_path, lambda: continual_imagenet.ContinualImageNetRun(cfg, 0, classes), stop_after=3)
    assert len(straight.accuracies) == 3 and straight.learner.methods[-1].resets == 3  # a head reset per task start
    assert sum(int(r) for r in straight.learner.methods[0].replacements) > 0


def test_incremental_cifar_resume_equals_uninterrupted_with_retraining(tmp_path):
    root = write_cifar100(tmp_path / "cifar-100-python")
    cfg = cfg_of("incremental_cifar", "retrained", f"data.path={root}", "increments=2", "classes_per_increment=3",
                 "epochs_per_increment=2", "lr_milestones=[1]", "batch_size=4", "net.width=2", "log.probe_size=8")
    data = load_cifar100(root)
    straight, _ = _resume_matches(tmp_path, lambda: incremental_cifar.IncrementalCifarRun(cfg, 0, data),
                                  stop_after=3)
    assert [h["classes"] for h in straight.history] == [3, 6]
    retrain = straight.learner.methods[-1]
    assert retrain.name == "reset" and retrain.resets == 1  # at the one switch between the two increments
    retrain.apply(straight.learner)
    assert all(torch.all(t == 0) for t in straight.learner.optimizer.state["momentum"])
    assert all(torch.all(b.running_var == 1) for b in straight.net.modules() if hasattr(b, "running_var"))
    assert {"test_accuracy", "features/stable_rank", "block0.0/dormant_fraction"} <= set(straight.history[0])


class _Result:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


@pytest.fixture
def cli(capsys):
    """The command line, run in this process (no interpreter start-up per call)."""
    def run(*args):
        code = main(list(args))
        return _Result(code, capsys.readouterr().err)
    return run


def sets(*items):
    return [x for s in items for x in ("--set", s)]


def test_train_cli_on_each_benchmark(tmp_path, cli):
    write_mnist_idx(tmp_path / "mnist", gz=True)
    r = cli("train", str(ROOT / "configs/permuted_mnist/snp.yaml"), "--out", str(tmp_path / "pm"), "--seeds", "2",
            *sets(f"data.path={tmp_path / 'mnist'}", "tasks=2", "examples_per_task=30", "net.hidden=[8]"))
    assert r.returncode == 0, r.stderr
    results = json.loads((tmp_path / "pm" / "results.json").read_text())
    assert results["tasks"] == 2 and results["seeds"] == 2
    assert "plasticity/net/layer0/dormant_fraction" in read_scalars(tmp_path / "pm" / "tb" / "mean")

    write_imagenet_batches(tmp_path / "in32")
    r = cli("train", str(ROOT / "configs/continual_imagenet/linear.yaml"), "--out", str(tmp_path / "ci"),
            *sets(f"data.path={tmp_path / 'in32'}", "data.train_per_class=6", "data.test_per_class=4", "tasks=2",
                  "epochs_per_task=1"))
    assert r.returncode == 0, r.stderr
    assert len(json.loads((tmp_path / "ci" / "results.json").read_text())["accuracies"]) == 2
    assert [s for s, _ in read_scalars(tmp_path / "ci" / "tb" / "seed_0")["charts/test_accuracy"]] == [1, 2]

    root = write_cifar100(tmp_path / "cifar-100-python")
    common = sets(f"data.path={root}", "increments=2", "classes_per_increment=2", "epochs_per_increment=1",
                  "net.width=2")
    r = cli("train", str(ROOT / "configs/incremental_cifar/retrained.yaml"), "--out", str(tmp_path / "re"), *common)
    assert r.returncode == 0, r.stderr
    r = cli("train", str(ROOT / "configs/incremental_cifar/cbp.yaml"), "--out", str(tmp_path / "cbp"), *common,
            *sets(f"reference={tmp_path / 're'}"))
    assert r.returncode == 0, r.stderr
    results = json.loads((tmp_path / "cbp" / "results.json").read_text())
    assert len(results["relative_to_retrained"]) == 2 and latest_checkpoint(tmp_path / "cbp" / "seed_0")


@pytest.mark.parametrize("config, overrides, words", [
    ("permuted_mnist/bp.yaml", ["data.path=/no/such/mnist"], ["/no/such/mnist", "does not exist", "x_train"]),
    ("continual_imagenet/bp.yaml", ["data.path=/no/such/in32"], ["/no/such/in32", "<class_index>.npy"]),
    ("incremental_cifar/base.yaml", ["data.path=null"], ["data.path", "cifar-100-python"]),
    ("incremental_cifar/base.yaml", ["data.path=/no/such/c"], ["/no/such/c", "train, test and meta"]),
    ("permuted_mnist/bp.yaml", ["device=tpu"], ["device", "'cpu', 'cuda'"]),
])
def test_bad_data_paths_are_one_clear_error(tmp_path, cli, config, overrides, words):
    r = cli("train", str(ROOT / "configs" / config), "--out", str(tmp_path / "run"), *sets(*overrides))
    assert r.returncode == 2 and all(w in r.stderr for w in words), r.stderr
    assert not (tmp_path / "run").exists()


def test_bad_data_format_found_at_load_is_one_clear_error(tmp_path, cli):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    r = cli("train", str(ROOT / "configs/continual_imagenet/bp.yaml"), "--out", str(tmp_path / "run"),
            *sets(f"data.path={tmp_path / 'junk'}"))
    assert r.returncode == 2 and "no down-sampled ImageNet data" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, cli):
    r = cli("train", str(ROOT / "configs/permuted_mnist/bp.yaml"), "--out", str(tmp_path / "run"),
            *sets("device=cuda", "tasks=1", "examples_per_task=10", "net.hidden=[4]"))
    assert r.returncode == 2 and "CUDA" in r.stderr


def test_supervised_bench_is_registered_with_its_options():
    from rl_plasticity.cli import build_parser

    args = build_parser().parse_args(["bench", "supervised", "--json", "--learners", "cbp", "--width", "8"])
    assert args.json and args.learners == "cbp" and args.width == 8 and args.device == "cpu"
