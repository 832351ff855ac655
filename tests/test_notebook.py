"""notebooks/colab.ipynb: stored without outputs, holding no package code, and run top to
bottom on tiny synthetic data (NERVE_JAX_SMOKE=1) to a checked submission."""

import ast
import csv
import time

import nbformat
import pytest

from tests.conftest import REPO

NOTEBOOK = f"{REPO}/notebooks/colab.ipynb"


def _notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def _python(source: str) -> str:
    """A code cell without its IPython lines (! shell and % magics), as Python."""
    lines = source.splitlines()
    return "\n".join(line[:len(line) - len(line.lstrip())] + "pass"
                     if line.strip().startswith(("!", "%")) else line for line in lines)


def test_stored_without_outputs():
    # Outputs would show a run on some other machine and data; the user's run writes its own.
    for cell in _notebook().cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_holds_no_copy_of_package_code():
    for cell in _notebook().cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(_python(cell.source))
        defined = [node for node in ast.walk(tree)
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                        ast.Lambda))]
        assert not defined, f"define it in the package, not in the notebook: {cell.source[:60]}"
        private = [alias.name for node in ast.walk(tree)
                   if isinstance(node, (ast.Import, ast.ImportFrom))
                   for alias in node.names if alias.name.startswith("_")]
        assert not private, private


@pytest.mark.slow
def test_runs_top_to_bottom_to_a_checked_submission(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("NERVE_JAX_SMOKE", "1")
    notebook = _notebook()
    start = time.perf_counter()
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.perf_counter() - start
    outputs = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for out in cell.outputs)
    assert f"{tmp_path}/smoke_run/submission.csv: valid" in outputs
    with open(tmp_path / "smoke_run" / "submission.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4  # the 4 synthetic test images
    images = [out for cell in notebook.cells if cell.cell_type == "code"
              for out in cell.outputs if "image/png" in out.get("data", {})]
    assert len(images) == 5  # 4 EDA figures and the validation overlay, inline
    assert seconds < 300, seconds
