"""Bad input through the real command line: exit code 2, one line on stderr naming the problem, no
traceback, and no file created, changed or deleted anywhere in the folder the command ran in.

Every case runs `rl_plasticity.cli.main` in this process against one shared folder of configs, runs,
checkpoints and data files (damaged in every way we support reading them), and compares a checksum of
every file and folder there before and after. A few cases also run as a real process, so that nothing
else (a traceback, a library's warning) reaches stderr.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rl_plasticity.cli import main as cli_main
from rl_plasticity.run.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
REGRESSION = ["examples=1000", "bin_size=500", "stream.change_every=500", "log.metrics_every=500",
              "log.probe_size=100", "log.checkpoint_every=500"]
PPO = ["total_steps=256", "env.change_every=100", "env.max_episode_steps=40", "net.hidden=[16,16]",
       "ppo.rollout_steps=128", "ppo.minibatch_size=64", "ppo.epochs=1", "log.checkpoint_every=128",
       "log.metrics_every=256", "log.probe_size=32"]
HUGE_LR = "optimizer.lr=1e30"

pytestmark = pytest.mark.usefixtures("one_thread")


def sets(*items: str) -> list[str]:
    return [x for item in items for x in ("--set", item)]


def config(path: str) -> str:
    return str(ROOT / "configs" / path)


# --------------------------------------------------------------------------- damage


class Evil:
    """Unpickling this runs a shell command: what a malicious checkpoint or data file would do."""

    def __reduce__(self):
        return (os.system, ("echo unpickled code ran >&2",))


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def flipped(data: bytes, at: float = 0.5) -> bytes:
    out = bytearray(data)
    out[int(len(out) * at)] ^= 0xFF
    return bytes(out)


def npz_bytes(**arrays) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def cifar_folder(folder: Path, train: bytes | None = None) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("train", "test"):
        labels = np.repeat(np.arange(100), 1)
        d = {b"data": rng.integers(0, 256, (100, 3072), dtype=np.uint8), b"fine_labels": labels.tolist()}
        (folder / name).write_bytes(pickle.dumps(d))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"c"] * 100}))
    if train is not None:
        (folder / "train").write_bytes(train)
    return folder


# --------------------------------------------------------------------------- the shared folder


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("bad_input")
    os.chdir(w)  # runs without --out go to ./runs here, inside the checked folder
    try:
        assert cli_main(["train", config("regression/bp.yaml"), "--out", "run", *sets(*REGRESSION)]) == 0
        assert cli_main(["train", config("quickstart/friction_ant_cbp.yaml"), "--seed", "0", "--out", "ppo",
                         *sets(*PPO)]) == 0
    finally:
        os.chdir(ROOT)
    good = (w / "run" / "checkpoints" / "ckpt-1000.pt").read_bytes()
    buf = w / "evil.pt"
    torch.save({"learner": Evil()}, buf)
    damaged = {"empty": b"", "truncated": truncated(good), "bitflip": flipped(good), "garbage": os.urandom(2000),
               "pickle_payload": buf.read_bytes(), "plain_pickle": pickle.dumps({"learner": Evil()}, protocol=4)}
    buf.unlink()
    for kind, data in damaged.items():  # runs whose every checkpoint is damaged: nothing to fall back to
        shutil.copytree(w / "run", w / f"ckpt_{kind}")
        (w / f"ckpt_{kind}" / "results.json").unlink()
        for _, path in list_checkpoints(w / f"ckpt_{kind}"):
            path.write_bytes(data)
    for kind, obj in (("wrong_structure", {"a": 1}), ("tensor", torch.zeros(3))):
        shutil.copytree(w / "run", w / f"ckpt_{kind}")
        for _, path in list_checkpoints(w / f"ckpt_{kind}"):
            torch.save(obj, path)
    shutil.copytree(w / "ppo", w / "ppo_wrong_structure")  # PPO checkpoints of another shape
    (w / "ppo_wrong_structure" / "results.json").unlink()
    for _, path in list_checkpoints(w / "ppo_wrong_structure"):
        torch.save({"agent": {"x": 1}}, path)
    ppo_ckpt = sorted((w / "ppo" / "checkpoints").glob("ckpt-*.pt"))[-1].read_bytes()
    (w / "ppo_evil.pt").write_bytes(damaged["pickle_payload"])
    (w / "ppo_bitflip.pt").write_bytes(flipped(ppo_ckpt))

    # Data files of every supported format, each damaged.
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8), np.arange(60) % 10
    mnist_npz = npz_bytes(x_train=x, y_train=y)
    (w / "data").mkdir()
    (w / "data" / "mnist.npz").write_bytes(mnist_npz)
    (w / "data" / "mnist_truncated.npz").write_bytes(truncated(mnist_npz))
    (w / "data" / "mnist_bitflip.npz").write_bytes(flipped(mnist_npz))
    for kind, damage in (("idx_truncated", truncated), ("idx_bitflip", flipped)):
        folder = w / "data" / kind
        folder.mkdir()
        (folder / "train-images-idx3-ubyte").write_bytes(damage(idx_bytes(x), ) if kind == "idx_truncated"
                                                         else flipped(idx_bytes(x), at=0.0))
        (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(y))
    for kind, damage in (("gz_truncated", truncated), ("gz_bitflip", flipped)):
        folder = w / "data" / kind
        folder.mkdir()
        (folder / "train-images-idx3-ubyte.gz").write_bytes(damage(gzip.compress(idx_bytes(x))))
        (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y)))
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    for kind, damage in (("npy_truncated", truncated), ("npy_bitflip", lambda b: flipped(b, at=0.0))):
        folder = w / "data" / kind
        folder.mkdir()
        np.save(folder / "0.npy", images)
        (folder / "1.npy").write_bytes(damage((folder / "0.npy").read_bytes()))
    batch = npz_bytes(data=rng.integers(0, 256, (20, 3072), dtype=np.uint8), labels=np.arange(20) % 2 + 1)
    for kind, damage in (("batch_truncated", truncated), ("batch_bitflip", flipped)):
        (w / "data" / kind).mkdir()
        (w / "data" / kind / "train_data_batch_1.npz").write_bytes(damage(batch))
    (w / "data" / "imagenet").mkdir()
    for c in range(2):
        np.save(w / "data" / "imagenet" / f"{c}.npy", images)
    cifar_folder(w / "data" / "cifar")
    train = (w / "data" / "cifar" / "train").read_bytes()
    cifar_folder(w / "data" / "cifar_truncated", truncated(train))
    cifar_folder(w / "data" / "cifar_bitflip", flipped(train, at=0.0))
    cifar_folder(w / "data" / "cifar_payload", pickle.dumps({b"data": Evil()}))

    # Configs, folders and files that are not what they are given as.
    (w / "configs").mkdir()
    (w / "configs" / "syntax.yaml").write_text("problem: regression\nexamples: [1, 2\n")
    (w / "configs" / "list.yaml").write_text("- problem\n- regression\n")
    (w / "configs" / "duplicate.yaml").write_text("problem: regression\nexamples: 1\nexamples: 2\n")
    (w / "configs" / "juggling.yaml").write_text("problem: juggling\n")
    (w / "configs" / "binary.yaml").write_bytes(b"\xff\xfe\x00problem")
    (w / "thesis").mkdir()
    (w / "thesis" / "chapter1.tex").write_text("months of work\n")
    (w / "thesis" / "config.yaml").write_text("my: own config\n")
    (w / "notes.txt").write_text("a file, not a folder\n")
    (w / "badinfo").mkdir()
    shutil.copy(w / "run" / "config.yaml", w / "badinfo" / "config.yaml")
    (w / "badinfo" / "run.json").write_text("{not json")
    (w / "empty").mkdir()
    (w / "configs" / "antv2.yaml").write_text("problem: ppo\nenv: {id: Ant-v2}\n")
    return w


def snapshot(folder: Path) -> dict[str, str]:
    """Every file's SHA-256 and every folder, by path under `folder`."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        out[rel] = "folder" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


R, P = config("regression/bp.yaml"), config("quickstart/friction_ant_cbp.yaml")
MNIST, IMAGENET, CIFAR = config("permuted_mnist/bp.yaml"), config("continual_imagenet/bp.yaml"), \
    config("incremental_cifar/base.yaml")
TINY_MNIST = ["tasks=1", "examples_per_task=30", "net.hidden=[8]"]
TINY_IMAGENET = ["data.path=data/imagenet", "data.train_per_class=8", "data.test_per_class=4", "tasks=1",
                 "epochs_per_task=1", "batch_size=4", "net.channels=[2,2,2]", "net.hidden=[4,4]"]
TINY_CIFAR = ["data.path=data/cifar", "increments=1", "classes_per_increment=2", "epochs_per_increment=1",
              "batch_size=1", "net.width=2"]

# (argv, words the error line must hold). Paths are relative to the shared folder.
CASES = {
    # configs
    "config missing": (["train", "configs/none.yaml"], ["config file not found", "none.yaml"]),
    "config is a folder": (["train", "configs"], ["is a directory"]),
    "config YAML syntax": (["train", "configs/syntax.yaml"], ["invalid YAML", "syntax.yaml", "line"]),
    "config not a mapping": (["train", "configs/list.yaml"], ["must hold a mapping"]),
    "config duplicate key": (["train", "configs/duplicate.yaml"], ["duplicate key", "examples"]),
    "config not text": (["train", "configs/binary.yaml"], ["cannot read config file"]),
    "unknown problem": (["train", "configs/juggling.yaml"], ["'problem'", "juggling"]),
    "unknown key": (["train", R, *sets("cbp.replacment_rate=0.1")], ["did you mean", "cbp.replacement_rate"]),
    "wrong type": (["train", R, *sets("examples=many")], ["examples", "int"]),
    "out of range": (["train", R, *sets("cbp.replacement_rate=-1")], ["cbp.replacement_rate", "[0, 1]"]),
    "keys that disagree": (["train", R, *sets("stream.slow_bits=30")], ["stream.slow_bits", "stream.inputs"]),
    "betas too few": (["train", P, *sets("optimizer.betas=[0.9]")], ["optimizer.betas", "list of 2 numbers"]),
    "betas not numbers": (["train", P, *sets("optimizer.betas=[a, b]")], ["optimizer.betas", "list of 2 numbers"]),
    "betas out of range": (["train", P, *sets("optimizer.betas=[1.5, 0.9]")], ["optimizer.betas", "[0, 1)"]),
    "env that cannot be made": (["train", "configs/antv2.yaml"], ["gymnasium cannot make 'Ant-v2'", "Ant-v5"]),
    # overrides
    "override without value": (["train", R, *sets("examples")], ["malformed override", "KEY=VALUE"]),
    "override into a value": (["train", R, *sets("examples.x=1")], ["'examples' is not a mapping"]),
    "override bad YAML": (["train", R, *sets("net.hidden=[1,")], ["malformed value", "net.hidden"]),
    "override bad list": (["train", R, *sets("net.hidden=[0]")], ["net.hidden", "positive integers"]),
    # seeds and arguments
    "no seeds": (["train", R, "--seeds", "0"], ["--seeds must be between 1 and 10,000"]),
    "negative seed": (["train", R, "--seed", "-1"], ["--seed must be >= 0"]),
    "seed not a number": (["train", R, "--seed", "abc"], ["--seed", "invalid int value"]),
    "seed and seeds": (["train", R, "--seed", "1", "--seeds", "2"], ["not allowed with"]),
    "unknown option": (["train", R, "--bogus"], ["unrecognized arguments", "--bogus"]),
    "no command": ([], ["required", "command"]),
    "no config": (["train"], ["give a config file"]),
    # run directories
    "existing run": (["train", R, "--out", "run"], ["run directory run exists", "--resume run"]),
    "force on a folder that is not a run": (["train", R, "--out", "thesis", "--force"],
                                            ["thesis", "not a run directory", "chapter1.tex"]),
    "out empty": (["train", R, "--out", ""], ["--out is empty"]),
    "sweep out empty": (["sweep", R, "--seeds", "0-1", "--out", ""], ["--out is empty"]),
    "bench regression no seeds": (["bench", "regression", "--seeds", "0"], ["--seeds must be >= 1"]),
    "bench regression no examples": (["bench", "regression", "--examples", "-5"], ["--examples must be >= 1"]),
    "force on a file": (["train", R, "--out", "notes.txt", "--force"], ["notes.txt is a file"]),
    "out below a file": (["train", R, "--out", "notes.txt/run"], ["notes.txt is a file"]),
    "resume nothing": (["train", "--resume", "nowhere"], ["run directory not found", "nowhere"]),
    "resume a folder that is not a run": (["train", "--resume", "thesis"], ["'problem' must be one of"]),
    "resume with a config": (["train", R, "--resume", "run"], ["give only the run directory"]),
    "resume with damaged run.json": (["train", "--resume", "badinfo"], ["cannot read", "run.json"]),
    "resume an empty folder": (["train", "--resume", "empty"], ["not a run directory"]),
    # checkpoints, every kind of damage
    "checkpoint empty": (["train", "--resume", "ckpt_empty"], ["no usable checkpoint", "empty"]),
    "checkpoint truncated": (["train", "--resume", "ckpt_truncated"], ["no usable checkpoint", "truncated"]),
    "checkpoint bit flip": (["train", "--resume", "ckpt_bitflip"], ["no usable checkpoint", "checksum mismatch"]),
    "checkpoint garbage": (["train", "--resume", "ckpt_garbage"], ["no usable checkpoint", "ckpt-1000.pt"]),
    "checkpoint pickle payload": (["train", "--resume", "ckpt_pickle_payload"], ["not plain data", "posix.system"]),
    "checkpoint plain pickle": (["train", "--resume", "ckpt_plain_pickle"], ["no usable checkpoint", "torch"]),
    "checkpoint wrong structure": (["train", "--resume", "ckpt_wrong_structure"], ["does not fit this run"]),
    "checkpoint not a dict": (["train", "--resume", "ckpt_tensor"], ["holds a Tensor, not a dict"]),
    "PPO checkpoint wrong structure": (["train", "--resume", "ppo_wrong_structure"],
                                       ["no usable checkpoint", "does not fit this run"]),
    # data files of every supported format, damaged
    "MNIST npz truncated": (["train", MNIST, *sets("data.path=data/mnist_truncated.npz", *TINY_MNIST)],
                            ["mnist_truncated.npz"]),
    "MNIST npz bit flip": (["train", MNIST, *sets("data.path=data/mnist_bitflip.npz", *TINY_MNIST)],
                           ["mnist_bitflip.npz"]),
    "MNIST IDX truncated": (["train", MNIST, *sets("data.path=data/idx_truncated", *TINY_MNIST)],
                            ["train-images-idx3-ubyte", "data bytes"]),
    "MNIST IDX bit flip": (["train", MNIST, *sets("data.path=data/idx_bitflip", *TINY_MNIST)],
                           ["train-images-idx3-ubyte", "not an IDX file"]),
    "MNIST gzip truncated": (["train", MNIST, *sets("data.path=data/gz_truncated", *TINY_MNIST)],
                             ["train-images-idx3-ubyte.gz"]),
    "MNIST gzip bit flip": (["train", MNIST, *sets("data.path=data/gz_bitflip", *TINY_MNIST)],
                            ["train-images-idx3-ubyte.gz"]),
    "ImageNet npy truncated": (["train", IMAGENET, *sets(*TINY_IMAGENET, "data.path=data/npy_truncated")],
                               ["1.npy"]),
    "ImageNet npy bit flip": (["train", IMAGENET, *sets(*TINY_IMAGENET, "data.path=data/npy_bitflip")],
                              ["1.npy"]),
    "ImageNet batch truncated": (["train", IMAGENET, *sets(*TINY_IMAGENET, "data.path=data/batch_truncated")],
                                 ["train_data_batch_1.npz"]),
    "ImageNet batch bit flip": (["train", IMAGENET, *sets(*TINY_IMAGENET, "data.path=data/batch_bitflip")],
                                ["train_data_batch_1.npz"]),
    "CIFAR truncated": (["train", CIFAR, *sets(*TINY_CIFAR, "data.path=data/cifar_truncated")],
                        ["CIFAR-100 file", "train"]),
    "CIFAR bit flip": (["train", CIFAR, *sets(*TINY_CIFAR, "data.path=data/cifar_bitflip")],
                       ["CIFAR-100 file", "train"]),
    "CIFAR pickle payload": (["train", CIFAR, *sets(*TINY_CIFAR, "data.path=data/cifar_payload")],
                             ["refusing to load", "system"]),
    "data path missing": (["train", MNIST, *sets("data.path=data/none.npz", *TINY_MNIST)], ["does not exist"]),
    # divergence in every problem, before anything could be saved
    "regression diverges": (["train", R, "--out", "new", *sets(*REGRESSION, HUGE_LR)],
                            ["training diverged at example", "optimizer.lr"]),
    "regression diverges under --force": (["train", R, "--out", "run", "--force", *sets(*REGRESSION, HUGE_LR)],
                                          ["training diverged", "optimizer.lr"]),
    "permuted MNIST diverges": (["train", MNIST, *sets("data.path=data/mnist.npz", *TINY_MNIST, HUGE_LR)],
                                ["training diverged at example", "optimizer.lr"]),
    "continual ImageNet diverges": (["train", IMAGENET, *sets(*TINY_IMAGENET, HUGE_LR)],
                                    ["training diverged at task 1", "optimizer.lr"]),
    "incremental CIFAR diverges": (["train", CIFAR, *sets(*TINY_CIFAR, HUGE_LR)],
                                   ["training diverged at epoch 1", "optimizer.lr"]),
    "PPO diverges": (["train", P, "--seed", "0", *sets(*PPO, HUGE_LR)], ["training diverged at step", "optimizer.lr"]),
    # figures
    "figure format": (["compare", "run", "--out", "fig.txt"], ["fig.txt", ".png"]),
    "figure without suffix": (["compare", "run", "--out", "fig"], ["figure file"]),
    "figure in a missing folder": (["compare", "run", "--out", "nowhere/fig.png"], ["does not exist"]),
    "compare nothing": (["compare", "empty", "--out", "fig.png"], ["no runs found"]),
    "compare unknown metric": (["compare", "run", "--metric", "charts/nope", "--out", "fig.png"],
                               ["no run has metric", "charts/nope"]),
    "compare bin": (["compare", "run", "--bin", "0", "--out", "fig.png"], ["--bin must be >= 1"]),
    # sweeps
    "sweep workers": (["sweep", R, "--seeds", "0-1", "--out", "sw", "--workers", "0"], ["--workers must be >= 1"]),
    "sweep retries": (["sweep", R, "--seeds", "0-1", "--out", "sw", "--retries", "-1"], ["--retries"]),
    "sweep address": (["sweep", R, "--seeds", "0-1", "--out", "sw", "--address", "1.2.3.4:6379"], ["--backend ray"]),
    "sweep seeds backwards": (["sweep", R, "--seeds", "3-1", "--out", "sw"], ["backwards"]),
    "sweep seeds text": (["sweep", R, "--seeds", "a-b", "--out", "sw"], ["0-29"]),
    "sweep no seeds": (["sweep", R, "--out", "sw"], ["give the seeds"]),
    "sweep bad config": (["sweep", R, "--seeds", "0-1", "--out", "sw", *sets("examples=lots")], ["examples"]),
    "sweep env that cannot be made": (["sweep", "configs/antv2.yaml", "--seeds", "0-1", "--out", "sw"],
                                      ["gymnasium cannot make 'Ant-v2'"]),
    "sweep into a file": (["sweep", R, "--seeds", "0-1", "--out", "notes.txt"], ["notes.txt is a file"]),
    "sweep into a folder": (["sweep", R, "--seeds", "0-1", "--out", "thesis"], ["not a sweep directory"]),
    "sweep resume a run": (["sweep", "--resume", "run"], ["not a sweep directory"]),
    "sweep backend": (["sweep", R, "--seeds", "0-1", "--backend", "slurm"], ["invalid choice", "slurm"]),
    # evaluation
    "evaluate phase beyond the run": (["evaluate", "ppo", "--phase", "3"], ["--phase 3 is beyond the run", "0-2"]),
    "evaluate friction negative": (["evaluate", "ppo", "--friction", "-1"], ["--friction must be a positive"]),
    "evaluate friction huge": (["evaluate", "ppo", "--friction", "100"], ["outside the supported range"]),
    "evaluate mass not a number": (["evaluate", "ppo", "--mass", "heavy"], ["invalid float value"]),
    "evaluate episodes": (["evaluate", "ppo", "--episodes", "0"], ["--episodes must be >= 1"]),
    "evaluate video format": (["evaluate", "ppo", "--video", "a.avi"], [".mp4"]),
    "evaluate video size": (["evaluate", "ppo", "--video", "a.mp4", "--video-size", "100"], ["16"]),
    "evaluate plot without sweep": (["evaluate", "ppo", "--plot", "p.png"], ["--plot goes with"]),
    "evaluate sweep values": (["evaluate", "ppo", "--sweep-friction", "0.1,x"], ["'x' is not a number"]),
    "evaluate a regression run": (["evaluate", "run"], ["PPO runs", "regression"]),
    "evaluate nothing": (["evaluate", "nowhere"], ["no such run directory or checkpoint"]),
    "evaluate a loose checkpoint": (["evaluate", "ppo_evil.pt"], ["cannot find the run's config.yaml"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(world, name, capsys, monkeypatch):
    argv, words = CASES[name]
    monkeypatch.chdir(world)
    before = snapshot(world)
    capsys.readouterr()
    try:
        code = cli_main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rl-plasticity: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]
    assert snapshot(world) == before


@pytest.mark.parametrize("kind, words", [("ppo_evil.pt", ["not plain data", "posix.system"]),
                                         ("ppo_bitflip.pt", ["checksum mismatch"])])
def test_damaged_ppo_checkpoint_in_its_run_is_one_line(world, kind, words, capsys, monkeypatch):
    """A damaged checkpoint named directly, inside its run directory (evaluate reads it as given)."""
    target = world / "ppo" / "checkpoints" / "ckpt-9999.pt"
    shutil.copy(world / kind, target)
    try:
        monkeypatch.chdir(world)
        before = snapshot(world)
        assert cli_main(["evaluate", str(target)]) == 2
        line = capsys.readouterr().err.strip()
        assert "\n" not in line and all(w in line for w in words), line
        assert snapshot(world) == before
    finally:
        target.unlink()


@pytest.mark.parametrize("argv, words", [
    (["train", "--resume", "ckpt_plain_pickle"], ["no usable checkpoint", "ckpt-1000.pt"]),
    (["compare", "run", "--out", "fig.txt"], ["fig.txt"]),
    (["train", R, "--out", "new", *sets(*REGRESSION, HUGE_LR)], ["training diverged"]),
    (["train", R, "--seed", "x"], ["invalid int value"]),
])
def test_a_real_process_prints_only_the_error_line(world, argv, words):
    """No traceback, no library warning: stderr is exactly our one line."""
    before = snapshot(world)
    env = {**os.environ, "RL_PLASTICITY_NO_PROGRESS": "1"}
    r = subprocess.run([sys.executable, "-m", "rl_plasticity.cli", *argv], cwd=world, capture_output=True,
                       text=True, env=env)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rl-plasticity: error: "), r.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert snapshot(world) == before


def test_force_refuses_a_folder_that_is_not_a_run_and_leaves_it_byte_identical(world, capsys, monkeypatch):
    monkeypatch.chdir(world)
    before = snapshot(world / "thesis")
    for extra in ([], ["--force"]):
        assert cli_main(["train", R, "--out", "thesis", *extra, *sets(*REGRESSION)]) == 2
        assert "not a run directory" in capsys.readouterr().err
    assert snapshot(world / "thesis") == before
    assert (world / "thesis" / "chapter1.tex").read_text() == "months of work\n"


def test_force_replaces_a_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", R, "--out", str(out), *sets(*REGRESSION)]) == 0
    (out / "error.log").write_text("from an earlier attempt")  # a run directory may hold one
    assert cli_main(["train", R, "--out", str(out), "--force", *sets(*REGRESSION)]) == 0
    assert not (out / "error.log").exists() and (out / "results.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the replaced run is gone, nothing beside it


@pytest.mark.parametrize("args, message", [
    (["sweep", "regression/bp.yaml", "--seeds", "0-100000000"], "at most 10,000 seeds"),
    (["sweep", "regression/bp.yaml", "--seeds", "20000"], "at most 10,000 seeds"),
    (["train", "regression/bp.yaml", "--seeds", "20000"], "between 1 and 10,000"),
])
def test_absurd_seed_counts_are_refused_at_once(tmp_path, capsys, args, message):
    args = [args[0], config(args[1]), *args[2:], "--out", str(tmp_path / "out")]
    assert cli_main(args) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()
