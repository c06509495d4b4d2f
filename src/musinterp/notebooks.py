"""Execute notebooks with papermill and render them to HTML with nbconvert.

Notebook sources live in ``workflow/notebooks`` as jupytext py:percent files (readable diffs);
the cell tagged ``parameters`` holds defaults that papermill overrides with the rule's inputs.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from .io import atomic_path

log = logging.getLogger(__name__)


def execute_notebook(source: str | Path, out_ipynb: str | Path, parameters: dict, cwd: str | Path | None = None,
                     kernel_name: str = "python3", timeout: int = 1800) -> None:
    """Run ``source`` (.py percent or .ipynb) with ``parameters``; keep the executed notebook.

    Paths in ``parameters`` are made absolute so the kernel's working directory does not matter.
    The output appears only when execution succeeded.
    """
    import jupytext
    import papermill

    source = Path(source)
    params = {k: _absolute(v) for k, v in parameters.items()}
    notebook = jupytext.read(source)
    if not any("parameters" in c.get("metadata", {}).get("tags", []) for c in notebook.cells):
        raise ValueError(f"{source}: no cell tagged 'parameters' for papermill")
    t0 = time.time()
    with tempfile.TemporaryDirectory() as scratch, atomic_path(out_ipynb, suffix=".ipynb") as tmp_out:
        tmp_in = Path(scratch) / source.with_suffix(".ipynb").name
        jupytext.write(notebook, tmp_in, fmt="ipynb")
        papermill.execute_notebook(
            str(tmp_in), str(tmp_out), parameters=params, kernel_name=kernel_name,
            cwd=str(cwd or Path.cwd()), progress_bar=False, log_output=False, execution_timeout=timeout,
        )
    log.info("executed %s -> %s in %.1f s", source, out_ipynb, time.time() - t0)


def render_html(ipynb: str | Path, out_html: str | Path) -> None:
    """Render an executed notebook to standalone HTML without code cells and without stderr."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(ipynb, as_version=4)
    # Logging and progress bars (stderr) stay in the executed notebook, not in the reader's page.
    for cell in nb.cells:
        if "outputs" in cell:
            cell.outputs = [o for o in cell.outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    with atomic_path(out_html, suffix=".html") as tmp:
        tmp.write_text(body, encoding="utf-8")
    log.info("rendered %s -> %s (%d kB)", ipynb, out_html, len(body) // 1024)


def _absolute(value):
    if isinstance(value, str) and value and os.path.exists(value):
        return str(Path(value).resolve())
    if isinstance(value, list):
        return [_absolute(v) for v in value]
    return value
