"""Nothing the server runs may unpickle: pickles are read once, offline, by tce import-seed."""
import re

from tests.conftest import REPO_ROOT

FORBIDDEN = re.compile(r"\bimport pickle\b|\bpickle\.|\bcloudpickle\b|\bjoblib\b|allow_pickle\s*=\s*True|"
                       r"torch\.load\(|pd\.read_pickle")


def test_python_backends_never_load_a_pickle():
    offenders = []
    for path in sorted((REPO_ROOT / "python_backends").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FORBIDDEN.search(line):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders


def test_every_numpy_load_refuses_pickles():
    for path in (REPO_ROOT / "python_backends").rglob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if "np.load(" in line:
                assert "allow_pickle=False" in line, f"{path}: {line.strip()}"
