"""The ``tl-latentlens`` command line: version, help, sub-command wiring and checks that run
before any model loads."""

from __future__ import annotations

import runpy

import pytest

from tl_latentlens.apps import cli, explain


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(explain, "load_vlm", refuse)
    monkeypatch.setattr("tl_latentlens.models.load.load_vlm", refuse)


@pytest.fixture
def bank_dir(tmp_path):
    bank = tmp_path / "bank"
    bank.mkdir()
    (bank / "manifest.json").write_text("{}")
    return bank


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("tl-latentlens ")


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["explain", "--help"])
    out = capsys.readouterr().out
    assert "(default: 5)" in out and "(default: latentlens_out)" in out
    assert "--method {auto,exact,routes}" in out and "(default: auto)" in " ".join(out.split())
    with pytest.raises(SystemExit):
        cli.main(["build-bank", "--help"])  # registered in bank/, formatted here
    assert "(default: " in capsys.readouterr().out


def test_every_subcommand_is_listed(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in ("explain", "build-bank", "evaluate", "demo", "train-connector", "fetch-data"):
        assert name in out


def test_a_broken_subcommand_module_is_not_swallowed(monkeypatch):
    """An ImportError in a sub-command's module surfaces (running that sub-command, or the
    full --help) instead of the command vanishing."""
    import sys

    import tl_latentlens.apps as apps

    monkeypatch.delattr(apps, "demo", raising=False)
    monkeypatch.delitem(sys.modules, "tl_latentlens.apps.demo", raising=False)
    monkeypatch.setitem(sys.modules, "tl_latentlens.default.bank_corpus", None)
    for argv in (["demo", "--quick"], ["--help"]):
        with pytest.raises(ImportError, match="tl_latentlens.default.bank_corpus"):
            cli.main(argv)


def test_only_the_named_subcommand_is_imported():
    """A one-image ``explain`` does not pay for the demo's, evaluation's or training's imports;
    options before the sub-command do not hide it, and without one every module is listed."""
    names = [m.__name__ for m in cli.subcommand_modules(["-v", "explain", "--model", "x"])]
    assert names == ["tl_latentlens.apps.explain"]
    every = [m.__name__.rsplit(".", 1)[1] for m in cli.subcommand_modules(["--help"])]
    assert every == list(cli.SUBCOMMANDS.values())
    assert len(cli.subcommand_modules(["nonsense"])) == len(cli.SUBCOMMANDS)


def test_the_cli_module_runs_as_a_script(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["tl-latentlens", "--version"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(cli.__file__, run_name="__main__")
    assert info.value.code == 0 and "tl-latentlens" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bank", "{missing}", "--images", "{image}"], "not a directory"),
        (["--bank", "{bank}", "--images", "{missing}"], "does not exist"),
        (["--bank", "{bank}", "--images", "{image}", "-k", "0"], "-k must be at least 1"),
        (["--bank", "{bank}", "--images", "{image}", "--hooks", "blocks.x"], "--hooks"),
        (["--bank", "{tmp}", "--images", "{image}"], "no manifest.json"),
        (
            ["--bank", "{bank}", "--images", "{image}", "--per-prompt", "2", "--prompt", "x"],
            "do not split into prompts",
        ),
        (["--bank", "{bank}", "--images", "{image}", "{image}", "--per-prompt", "2"], "--prompt"),
    ],
)
def test_explain_checks_before_loading(argv, message, tmp_path, bank_dir, no_model, capsys):
    image = tmp_path / "im.png"
    image.write_bytes(b"not read")
    names = {
        "missing": str(tmp_path / "missing"),
        "image": str(image),
        "bank": str(bank_dir),
        "tmp": str(tmp_path),
    }
    argv = [a.format(**names) for a in argv]
    assert cli.main(["explain", "--model", "default", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tl-latentlens explain: error:") and message in err


def test_explain_missing_model_directory(tmp_path, bank_dir, no_model, capsys):
    image = tmp_path / "im.png"
    image.write_bytes(b"")
    argv = ["explain", "--model", str(tmp_path / "nope"), "--bank", str(bank_dir)]
    assert cli.main([*argv, "--images", str(image)]) == 2
    assert "model directory" in capsys.readouterr().err


def test_build_bank_missing_corpus(tmp_path, no_model, capsys):
    argv = ["build-bank", "--model", "default", str(tmp_path / "c.txt"), str(tmp_path / "out")]
    assert cli.main(argv) == 2
    assert "corpus" in capsys.readouterr().err


def test_evaluate_llm_judge_settings_checked_before_loading(
    tmp_path, bank_dir, no_model, monkeypatch, capsys
):
    monkeypatch.delenv("TL_LATENTLENS_JUDGE_MODEL", raising=False)
    argv = ["evaluate", "--model", "default", "--bank", str(bank_dir), "--judge", "llm"]
    assert cli.main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert "TL_LATENTLENS_JUDGE_MODEL" in capsys.readouterr().err


def test_evaluate_missing_images(tmp_path, bank_dir, no_model, capsys):
    argv = ["evaluate", "--model", "default", "--bank", str(bank_dir), "--out", str(tmp_path)]
    assert cli.main([*argv, "--images", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluate_missing_controls_file(tmp_path, bank_dir, no_model, capsys):
    """A --controls file that is not there is named before the model loads."""
    argv = ["evaluate", "--model", "default", "--bank", str(bank_dir), "--out", str(tmp_path)]
    assert cli.main([*argv, "--controls", str(tmp_path / "held.txt")]) == 2
    err = capsys.readouterr().err
    assert "--controls" in err and "held.txt" in err and "does not exist" in err


def test_train_connector_export_needs_a_directory(capsys):
    """A bare --export used to overwrite the weights inside the installed package."""
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["train-connector", "--export"])
    assert info.value.code == 2
    assert "--export" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["train-connector", "--export", "out"])
    assert args.export == "out"


def test_console_entry_exits_with_mains_status_after_freezing_the_heap(monkeypatch):
    """``run`` (the console script and ``python -m``) exits with ``main``'s status and freezes
    the collector's objects first, so shutdown skips a full collection."""
    from pathlib import Path

    import tomllib

    calls = []
    monkeypatch.setattr(cli, "main", lambda: calls.append("main") or 3)
    monkeypatch.setattr(cli.gc, "freeze", lambda: calls.append("freeze"))
    with pytest.raises(SystemExit) as info:
        cli.run()
    assert info.value.code == 3 and calls == ["main", "freeze"]
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["tl-latentlens"] == "tl_latentlens.apps.cli:run"
