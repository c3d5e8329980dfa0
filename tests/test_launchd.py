"""``foreman launchd``: the plist's content, and install/uninstall in a temporary HOME.

Everything runs on any platform: launchctl is never called for real (``--load`` is
refused off macOS, and the macOS path runs a recording fake).
"""

from __future__ import annotations

import argparse
import os
import plistlib
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from foreman.ops import launchd
from foreman.ops.launchd import DEFAULT_LABEL, Host

UID = 501


@attrs.define
class Launchctl:
    """Records the launchctl commands run, answering with scripted statuses."""

    statuses: dict[str, list[int]] = attrs.Factory(dict)
    commands: list[list[str]] = attrs.Factory(list)

    def __call__(self, command: Sequence[str]) -> int:
        self.commands.append(list(command))
        answers = self.statuses.get(command[1], [])
        return answers.pop(0) if answers else 0


@attrs.define
class Machine:
    home: Path
    venv: Path
    token: Path
    launchctl: Launchctl
    platform: str = "linux"
    environ: dict[str, str] = attrs.Factory(dict)
    sleeps: list[float] = attrs.Factory(list)

    def host(self, **changes: Any) -> Host:
        host = Host(
            home=self.home,
            uid=UID,
            platform=self.platform,
            executable=str(self.venv / "bin" / "python"),
            cwd=self.home.parent,
            environ=self.environ,
            run=self.launchctl,
            sleep=self.sleeps.append,
        )
        return attrs.evolve(host, **changes)

    def main(self, *argv: str, **changes: Any) -> int:
        return launchd.main(list(argv), self.host(**changes))

    @property
    def twistd(self) -> Path:
        return self.venv / "bin" / "twistd"

    @property
    def plist(self) -> Path:
        return self.home / "Library" / "LaunchAgents" / f"{DEFAULT_LABEL}.plist"


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    home = tmp_path / "home"
    home.mkdir()
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    twistd = venv / "bin" / "twistd"
    twistd.write_text("#!/bin/sh\n")
    twistd.chmod(0o755)
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    return Machine(home=home, venv=venv, token=token, launchctl=Launchctl())


def printed(machine: Machine, capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert machine.main("install", "--print", *argv) == 0
    plist: dict[str, Any] = plistlib.loads(capsys.readouterr().out.encode("utf-8"))
    return plist


def foreman_args(plist: dict[str, Any]) -> list[str]:
    arguments: list[str] = plist["ProgramArguments"]
    return arguments[arguments.index("foreman") + 1 :]


def test_print_parses_and_writes_nothing(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    plist = printed(machine, capsys)
    assert plist["Label"] == DEFAULT_LABEL
    assert plist["ProgramArguments"][:5] == [
        str(machine.twistd),
        "--nodaemon",
        "--pidfile=",
        f"--logfile={machine.home}/Library/Logs/foreman/foreman.log",
        "foreman",
    ]
    assert list(machine.home.iterdir()) == []


def test_print_subcommand_is_install_print(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert machine.main("print", "--embed-model", "nomic-embed-text") == 0
    assert plistlib.loads(capsys.readouterr().out.encode()) == printed(
        machine, capsys, "--embed-model", "nomic-embed-text"
    )


def test_supervision_keys(machine: Machine, capsys: pytest.CaptureFixture[str]) -> None:
    plist = printed(machine, capsys)
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ThrottleInterval"] == 10
    # launchd's SIGKILL comes after foreman's drain (20 s by default) has had its time.
    assert plist["ExitTimeOut"] == 30
    assert plist["ProcessType"] == "Background"
    assert plist["SoftResourceLimits"] == {"NumberOfFiles": 4096}
    assert plist["HardResourceLimits"] == {"NumberOfFiles": 10240}
    assert "EnvironmentVariables" not in plist
    data = machine.home / "Library" / "Application Support" / "foreman"
    assert plist["WorkingDirectory"] == str(data)
    assert foreman_args(plist) == [f"--data-dir={data}"]
    logs = machine.home / "Library" / "Logs" / "foreman"
    assert plist["StandardOutPath"] == str(logs / "foreman.stdout.log")
    assert plist["StandardErrorPath"] == str(logs / "foreman.stderr.log")


def path_values(plist: dict[str, Any]) -> list[str]:
    """Every value in the plist that names a file or folder."""
    values = [plist[key] for key in ("WorkingDirectory", "StandardOutPath", "StandardErrorPath")]
    for argument in plist["ProgramArguments"]:
        value = argument.partition("=")[2] if argument.startswith("--") else argument
        if "/" in value and "://" not in value:
            values.append(value)
    return values


def test_every_path_is_absolute(machine: Machine, capsys: pytest.CaptureFixture[str]) -> None:
    relative_token = os.path.relpath(machine.token, machine.home.parent)
    (machine.home / "ollama-token").write_text("t\n")
    plist = printed(
        machine,
        capsys,
        "--token-file",
        relative_token,
        "--ollama-token-file=~/ollama-token",
        "--data-dir",
        "data/../foreman-data",
        "--ollama-url",
        "http://127.0.0.1:11434",
    )
    values = path_values(plist)
    # twistd, --logfile, --data-dir, two token files, and three keys (not the URL).
    assert len(values) == 8
    assert all(Path(value).is_absolute() for value in values), values
    assert all(".." not in Path(value).parts for value in values), values
    assert f"--token-file={machine.token}" in foreman_args(plist)
    assert f"--ollama-token-file={machine.home}/ollama-token" in foreman_args(plist)
    data = machine.home.parent / "foreman-data"
    assert plist["WorkingDirectory"] == str(data)
    assert f"--data-dir={data}" in foreman_args(plist)


def test_options_pass_through_to_twistd_foreman(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    plist = printed(
        machine,
        capsys,
        "--listen",
        "tcp:11435:interface=100.64.0.7",
        "--token-file",
        str(machine.token),
        "--ollama-url=http://10.0.0.2:11434",
        "--log-format",
        "json",
        "--keep-alive",
        "30m",
        "--no-queue",
    )
    assert foreman_args(plist)[1:] == [
        "--listen=tcp:11435:interface=100.64.0.7",
        "--ollama-url=http://10.0.0.2:11434",
        f"--token-file={machine.token}",
        "--log-format=json",
        "--keep-alive=30m",
        "--no-queue",
    ]


def test_upstream_auto_is_warned_about(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert machine.main("install", "--print", "--upstream", "auto") == 0
    assert "an Ollama not up yet means the simulator until a restart" in capsys.readouterr().err


def test_secrets_on_the_command_line_are_refused(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    for flag in ("--token", "--ollama-token", "--webhook-secret"):
        assert machine.main("install", f"{flag}=hunter2") == 2
        captured = capsys.readouterr()
        assert f"pass {flag}-file FILE" in captured.err
        assert "hunter2" not in captured.out + captured.err
    # Not mistaken for an abbreviation of --token-file either.
    assert machine.main("install", "--token", str(machine.token)) == 2
    assert not machine.plist.exists()


def test_what_foreman_would_refuse_is_refused_now(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert machine.main("install", "--log-format", "xml") == 2
    assert "--log-format must be text or json" in capsys.readouterr().err
    assert machine.main("install", "--token-file", str(machine.home / "missing")) == 2
    assert "cannot read token file" in capsys.readouterr().err
    # Beyond loopback without a token: FOREMAN_TOKEN in this shell would not help.
    machine.environ["FOREMAN_TOKEN"] = "from-the-shell"
    assert machine.main("install", "--listen", "tcp:11435") == 2
    err = capsys.readouterr().err
    assert "FOREMAN_TOKEN set here will not reach the launchd job" in err
    assert "refuse to listen on 'tcp:11435' without a token" in err
    assert "from-the-shell" not in err
    assert machine.main("install", "--listen", "unix:foreman.sock") == 2
    assert "absolute path" in capsys.readouterr().err
    assert not (machine.home / "Library").exists()


def test_install_writes_the_plist_and_folders(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert machine.main("install", "--token-file", str(machine.token)) == 0
    where = launchd.layout(DEFAULT_LABEL, machine.home)
    expected = launchd.build_plist(where, machine.twistd, [f"--token-file={machine.token}"])
    with machine.plist.open("rb") as f:
        assert plistlib.load(f) == expected
    assert machine.plist.read_bytes() == launchd.render(expected)
    assert stat.S_IMODE(machine.plist.stat().st_mode) == 0o644
    assert where.log_dir.is_dir()
    assert where.data_dir.is_dir()
    assert stat.S_IMODE(where.data_dir.stat().st_mode) == 0o700
    assert [p.name for p in machine.plist.parent.iterdir()] == [machine.plist.name]
    out = capsys.readouterr().out
    assert f"Wrote {machine.plist}" in out
    assert f"  launchctl bootstrap gui/{UID} {machine.plist}\n" in out
    assert f"launchctl kickstart -k gui/{UID}/{DEFAULT_LABEL}\n" in out
    assert "bootout" not in out
    assert f"Log: {where.log_file} (text, rotated at 1 MB" in out
    assert machine.launchctl.commands == []


def test_reinstall_replaces_a_changed_plist(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert machine.main("install") == 0
    assert machine.main("install", "--embed-model", "nomic-embed-text") == 0
    out = capsys.readouterr().out
    assert f"Replaced {machine.plist}" in out
    bootout = f"launchctl bootout gui/{UID}/{DEFAULT_LABEL}"
    assert out.index(bootout) < out.rindex("launchctl bootstrap")
    installed = plistlib.loads(machine.plist.read_bytes())
    assert "--embed-model=nomic-embed-text" in installed["ProgramArguments"]
    assert machine.main("install", "--embed-model", "nomic-embed-text") == 0
    assert "is already up to date" in capsys.readouterr().out


def test_uninstall_removes_the_plist_and_keeps_logs_and_data(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    data = machine.home / "elsewhere"
    assert machine.main("install", "--data-dir", str(data)) == 0
    where = launchd.layout(DEFAULT_LABEL, machine.home)
    (where.log_file).write_text("a log line\n")
    (data / "foreman.sqlite3").write_text("jobs")
    capsys.readouterr()
    assert machine.main("uninstall") == 0
    out = capsys.readouterr().out
    assert not machine.plist.exists()
    assert where.log_file.read_text() == "a log line\n"
    assert (data / "foreman.sqlite3").read_text() == "jobs"
    assert f"Removed {machine.plist}" in out
    assert f"launchctl bootout gui/{UID}/{DEFAULT_LABEL}" in out
    assert f"Kept the logs in {where.log_dir} and the data in {data}" in out
    assert machine.main("uninstall") == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_load_is_refused_off_macos(machine: Machine, capsys: pytest.CaptureFixture[str]) -> None:
    assert machine.main("install", "--load") == 2
    assert "only on macOS (this is linux)" in capsys.readouterr().err
    assert not (machine.home / "Library").exists()
    assert machine.main("install") == 0
    assert machine.main("uninstall", "--unload") == 2
    assert machine.plist.exists()
    assert machine.main("install", "--print", "--load") == 2
    assert machine.launchctl.commands == []


def test_load_on_macos_runs_launchctl(machine: Machine, capsys: pytest.CaptureFixture[str]) -> None:
    machine.platform = "darwin"
    target = f"gui/{UID}/{DEFAULT_LABEL}"
    bootstrap = ["launchctl", "bootstrap", f"gui/{UID}", str(machine.plist)]
    assert machine.main("install", "--load") == 0
    assert machine.launchctl.commands == [bootstrap]
    # A reinstall boots the old job out first (tolerating "not loaded") and
    # retries a bootstrap that races with the old job's exit.
    machine.launchctl.commands.clear()
    machine.launchctl.statuses = {"bootout": [3], "bootstrap": [5]}
    assert machine.main("install", "--load", "--embed-model", "nomic-embed-text") == 0
    assert machine.launchctl.commands == [["launchctl", "bootout", target], bootstrap, bootstrap]
    assert machine.sleeps == [1.0]
    assert "it was not loaded" in capsys.readouterr().out
    machine.launchctl.statuses = {"bootstrap": [5, 5, 5]}
    assert machine.main("install", "--load") == 1
    assert "launchctl bootstrap" in capsys.readouterr().err
    machine.launchctl.commands.clear()
    assert machine.main("uninstall", "--unload") == 0
    assert machine.launchctl.commands == [["launchctl", "bootout", target]]
    assert not machine.plist.exists()


def test_launchctl_is_run_by_absolute_path(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []

    def fake_run(command: list[str], check: bool) -> subprocess.CompletedProcess[bytes]:
        ran.append(command)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert launchd.Host().run(["launchctl", "bootout", "gui/501/x"]) == 0
    assert ran == [["/bin/launchctl", "bootout", "gui/501/x"]]


def test_missing_twistd_is_a_clear_error(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    machine.twistd.unlink()
    assert machine.main("install", "--print") == 1
    err = capsys.readouterr().err
    assert f"no twistd next to {machine.venv}/bin/python (looked for {machine.twistd})" in err
    assert machine.main("install", executable="") == 1
    assert "no twistd next to this Python" in capsys.readouterr().err


def test_twistd_is_found_beside_a_symlinked_python(
    machine: Machine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = tmp_path / "base" / "bin"
    base.mkdir(parents=True)
    (base / "python3").write_text("")
    (machine.venv / "bin" / "python").symlink_to(base / "python3")
    assert printed(machine, capsys)["ProgramArguments"][0] == str(machine.twistd)


def test_another_label_gets_its_own_logs_and_data(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    plist = printed(machine, capsys, "--label", "local.foreman.gpu2")
    logs = machine.home / "Library" / "Logs" / "foreman"
    data = machine.home / "Library" / "Application Support" / "foreman" / "local.foreman.gpu2"
    assert plist["Label"] == "local.foreman.gpu2"
    assert plist["StandardErrorPath"] == str(logs / "local.foreman.gpu2.stderr.log")
    assert f"--logfile={logs}/local.foreman.gpu2.log" in plist["ProgramArguments"]
    assert plist["WorkingDirectory"] == str(data)
    for bad in ("../evil", "a/b", "x.plist", ""):
        assert machine.main("install", "--label", bad) == 2
        assert "not a usable label" in capsys.readouterr().err


def test_json_logs_are_announced_where_they_go(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert machine.main("install", "--log-format", "json") == 0
    log_file = machine.home / "Library" / "Logs" / "foreman" / "foreman.log"
    assert f"Log: {log_file} (JSON lines, rotated at 1 MB" in capsys.readouterr().out


def test_render_round_trips(machine: Machine) -> None:
    where = launchd.layout(DEFAULT_LABEL, machine.home)
    plist = launchd.build_plist(where, machine.twistd, ["--listen=tcp:1:interface=::1"])
    assert plistlib.loads(launchd.render(plist)) == plist
    assert launchd.render(plist).startswith(b"<?xml")


def test_register_adds_launchd_to_a_foreman_command(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="foreman")
    parser.add_argument("--token-file", dest="token_file")
    subparsers = parser.add_subparsers(dest="command", required=True)
    launchd.register(subparsers, machine.host())
    args = parser.parse_args(
        ["--token-file", "client", "launchd", "install", "--token-file", str(machine.token)]
    )
    assert args.token_file == "client"
    assert args.func(args) == 0
    assert machine.plist.exists()
    args = parser.parse_args(["launchd", "uninstall"])
    assert args.func(args) == 0
    assert not machine.plist.exists()


def test_module_runs_as_a_command(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FOREMAN_")}
    finished = subprocess.run(
        [sys.executable, "-m", "foreman.ops.launchd", "install", "--print"],
        env={**environment, "HOME": str(tmp_path)},
        capture_output=True,
        check=True,
        timeout=60,
    )
    plist = plistlib.loads(finished.stdout)
    assert plist["ProgramArguments"][0] == str(Path(sys.executable).absolute().parent / "twistd")
    assert plist["WorkingDirectory"] == str(tmp_path / "Library/Application Support/foreman")
    assert list(tmp_path.iterdir()) == []


def test_exit_timeout_follows_the_drain_asked_for(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    plist = printed(machine, capsys, "--drain-timeout", "2m")
    assert "--drain-timeout=2m" in foreman_args(plist)
    assert plist["ExitTimeOut"] == 130
