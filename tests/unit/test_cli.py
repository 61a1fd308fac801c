"""The CLI's shape: every option explains itself and shows its default."""
import argparse

from tce.cli import COMMANDS, main, parser


def _commands(root: argparse.ArgumentParser):
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from _commands(sub)


def test_every_option_has_help_and_shows_its_default():
    commands = dict(_commands(parser()))
    assert len(commands) >= len(COMMANDS)
    for name, command in commands.items():
        options = [a for a in command._actions if a.option_strings and a.dest != "help"]
        if not options:
            continue
        assert command.formatter_class is argparse.ArgumentDefaultsHelpFormatter, name
        for action in options:
            assert action.help and action.help.strip(), f"tce {name} {action.option_strings[0]} has no help"


def test_a_usage_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["build", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a directory" in err and "Traceback" not in err


def test_a_bug_keeps_its_traceback(monkeypatch, bimodal_bundle, tmp_path):
    import pytest

    import tce.repository.builder as repository

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(repository, "write_repository", broken)
    with pytest.raises(KeyError, match="a bug"):  # not turned into a one-line error
        main(["build", str(bimodal_bundle.root), "--out", str(tmp_path / "repository")])
