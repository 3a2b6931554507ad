"""The README's commands are promises: every `rl-plasticity ...` command in it runs as written.

Commands are taken from README.md's code blocks and inline code, split into arguments by bash itself
(quotes, `{a,b}` expansion), and run in README order in a scratch folder that sees the repository's
configs. Long ones get a few `--set` overrides (and fewer seeds) so the whole file runs in well under
a minute; placeholders such as `runs/RUN` and `SWEEP_DIR` become the runs the commands before made.
Synopsis lines (`[...]`, `a|b`, `<learner>`, `RUN_DIR`) and benchmarks, which are long by design, are
checked against the command-line parser instead: every subcommand and option they name must exist.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from rl_plasticity.cli import build_parser
from rl_plasticity.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PPO = ["total_steps=256", "env.change_every=100", "env.max_episode_steps=40", "net.hidden=[16,16]",
       "ppo.rollout_steps=128", "ppo.minibatch_size=64", "ppo.epochs=1", "log.checkpoint_every=128",
       "log.metrics_every=128", "log.probe_size=32"]
REGRESSION = ["examples=1000", "bin_size=500", "stream.change_every=500", "log.metrics_every=500",
              "log.probe_size=100", "log.checkpoint_every=500"]


def _sets(items):
    return " " + " ".join(f"--set {s}" for s in items)


# README command (as written) -> (text replacements, arguments appended) that make it short.
SHORTER = {
    "rl-plasticity train configs/quickstart/friction_ant_cbp.yaml --seed 0": ({}, _sets(PPO)),
    "rl-plasticity train configs/regression/cbp.yaml --seeds 30": ({}, _sets(REGRESSION)),
    "rl-plasticity train configs/friction_ant/cbp.yaml --seed 0": ({}, _sets(PPO)),
    "rl-plasticity evaluate runs/RUN --friction 0.02 --episodes 10 --video ant.mp4":
        ({}, " --max-episode-steps 10 --video-size 64"),
    "rl-plasticity sweep configs/friction_ant/{std,cbp}.yaml --seeds 0-29": ({"0-29": "0-1"}, _sets(PPO)),
}


def readme_commands() -> list[str]:
    """Every `rl-plasticity ...` command of README.md, in order (a synopsis continued on indented lines is one)."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block, inline in re.findall(r"```[^\n]*\n(.*?)```|`([^`\n]+)`", text, flags=re.S):
        if inline:
            if inline.startswith("rl-plasticity"):
                commands.append(inline)
            continue
        for line in block.splitlines():
            if "rl-plasticity " in line and not line.lstrip().startswith("#"):
                commands.append(line[line.index("rl-plasticity"):].split(" && ")[0].rstrip())
            elif line.startswith(" ") and commands and commands[-1].endswith("|"):  # a synopsis goes on
                commands[-1] += " " + line.strip()
    return commands


def is_synopsis(command: str) -> bool:
    return any(mark in command for mark in ("[", "|", "...", "<")) or re.search(r"\bRUN_DIR\b", command) is not None


def argv_of(command: str) -> list[str]:
    """The arguments bash would pass (quotes removed, braces expanded)."""
    out = subprocess.run(["bash", "-c", "printf '%s\\0' " + command.split(" ", 1)[1]], capture_output=True,
                         check=True).stdout.decode()
    return out.split("\0")[:-1]


def _subparsers(parser):
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices


def check_synopsis(command: str) -> None:
    """The subcommand, its named choices and every --option must exist in the parser."""
    parser = build_parser()
    words = command.split()
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", command))
    targets = [parser] if words[1].startswith("--") else [_subparsers(parser)[words[1]]]
    if words[1] == "bench" and len(words) > 2 and words[2] != "...":
        benches = _subparsers(targets[0])
        missing = [name for name in words[2].split("|") if name not in benches]
        assert not missing, f"README names benchmarks that do not exist: {missing}"
        targets = [benches[name] for name in words[2].split("|")]
    known = set.intersection(*({s for a in t._actions for s in a.option_strings} for t in targets))
    assert options <= known, f"README's `{command}` names options the CLI lacks: {sorted(options - known)}"


def test_every_readme_command_runs_as_written(tmp_path, monkeypatch, capsys):
    commands = readme_commands()
    assert len(commands) >= 10
    stale = [c for c in SHORTER if c not in commands]
    assert not stale, f"SHORTER names commands the README no longer has: {stale}"
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    ran = 0
    for command in commands:
        if is_synopsis(command):
            check_synopsis(command)
            continue
        replace, extra = SHORTER.get(command, ({}, ""))
        text = command
        for old, new in replace.items():
            text = text.replace(old, new)
        text = text.replace("runs/RUN", str(_newest("runs/friction_ant-cbp-*")))
        text = text.replace("SWEEP_DIR", str(_newest("runs/sweep-*")))
        argv = argv_of(text + extra)
        if argv[0] == "bench":  # benchmarks are long by design: the arguments must parse
            build_parser().parse_args(argv)
            continue
        try:
            code = cli_main(argv)
        except SystemExit as e:  # --version
            code = e.code
        assert code == 0, f"README command failed: {command}\n{capsys.readouterr().err}"
        ran += 1
    assert ran >= 6
    assert Path("ant.mp4").stat().st_size > 0 and Path("fig.png").is_file() and Path("fig.csv").is_file()


def _newest(pattern: str) -> Path:
    found = sorted(Path().glob(pattern))
    return found[-1] if found else Path(pattern)


def test_the_synopsis_lists_every_command():
    named = {c.split()[1] for c in readme_commands()}
    assert set(_subparsers(build_parser())) <= named | {"--version"}
    assert "--version" in named


@pytest.mark.parametrize("command", ["rl-plasticity train CONFIG --bogus", "rl-plasticity sweep CONFIG [--nope N]"])
def test_a_drifted_synopsis_is_caught(command):
    with pytest.raises(AssertionError, match="options the CLI lacks"):
        check_synopsis(command)
