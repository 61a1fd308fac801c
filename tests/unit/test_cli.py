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
        assert issubclass(command.formatter_class, argparse.ArgumentDefaultsHelpFormatter), name
        for action in options:
            assert action.help and action.help.strip(), f"tce {name} {action.option_strings[0]} has no help"
        help_text = command.format_help()
        assert "(default: None)" not in help_text and "(default: [])" not in help_text, name
    assert "(default: 1000)" in commands["fit"].format_help()  # a real default is still shown


def test_version_names_the_project_and_its_triton(capsys):
    import pytest

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("tce 0.1.0 (embedded Triton 2.51.0)")


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
