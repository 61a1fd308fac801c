"""The code base keeps its floors (docs/architecture.md): no import runs back up a layer
and no modules import each other in a cycle. A planted back-import is caught."""
from __future__ import annotations

from tests.layers import ALLOWED, REPO_ROOT, SOURCE_ROOTS, cycles, import_graph, package_of, violations


def test_no_import_goes_against_the_layers():
    graph = import_graph()
    assert len(graph) > 80
    assert violations(graph) == []


def test_no_modules_import_each_other_in_a_cycle():
    assert cycles(import_graph()) == []


def test_every_module_belongs_to_a_declared_package():
    for module in import_graph():
        assert package_of(module) in ALLOWED, module


def test_a_planted_back_import_is_caught(tmp_path):
    """A copy of the library layer with one module importing a job: reported, naming both."""
    import shutil

    shutil.copytree(SOURCE_ROOTS["tce"], tmp_path / "tce")
    planted = tmp_path / "tce" / "lib" / "tables.py"
    planted.write_text(planted.read_text(encoding="utf-8") + "\n\ndef _late():\n    from tce.jobs import predict\n",
                       encoding="utf-8")
    graph = import_graph({**SOURCE_ROOTS, "tce": tmp_path / "tce"})
    (found,) = violations(graph)
    assert found.startswith("tce.lib.tables -> tce.jobs.predict (tce.lib may import:")


def test_a_planted_cycle_and_a_server_side_import_of_the_client_are_caught():
    graph = {k: set(v) for k, v in import_graph().items()}
    graph["tce.lib.tables"].add("tce.lib.parts")
    graph["tce.lib.parts"].add("tce.lib.tables")
    assert ["tce.lib.parts", "tce.lib.tables"] in cycles(graph)
    graph["tce_backends.steps"].add("tce_client.schema")
    assert any(v.startswith("tce_backends.steps -> tce_client.schema") for v in violations(graph))


def test_the_architecture_page_lists_every_package_and_its_floors():
    page = (REPO_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for package, allowed in ALLOWED.items():
        if package == "tce":
            continue
        row = next((line for line in page.splitlines() if line.startswith(f"| `{package}` ")), None)
        assert row is not None, f"docs/architecture.md has no row for {package}"
        for other in allowed:
            assert f"`{other}`" in row, f"{package} may import {other}: the page's row does not say so"
