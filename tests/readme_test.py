"""The README's Python examples run as they stand there, and every file the docs cite exists."""

import json
import os
import re
import subprocess
import sys

from testing import ROOT


def _readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def _python_block_after(heading):
    readme = _readme()
    start = readme.index("```python", readme.index(f"\n{heading}\n")) + len("```python")
    return readme[start:readme.index("```", start)]


def _run(code, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_readme_has_no_python_example_that_is_not_run_here():
    assert _readme().count("```python") == 2


def test_the_readme_prune_example_runs_and_its_student_is_smaller(tmp_path):
    stdout = _run(_python_block_after("### From Python"), tmp_path)
    with open(tmp_path / "runs" / "mine" / "results.json") as f:
        results = json.load(f)
    student, teacher = results["views"][0], results["teacher"]
    assert student["params"] < teacher["params"] and student["macs"] < teacher["macs"]
    assert f"{student['params']:>8,} params" in stdout
    assert os.path.exists(tmp_path / "student.keras")
    assert os.path.exists(tmp_path / "runs" / "mine" / "export" / "student.tflite")


def test_the_readme_python_api_example_runs(tmp_path):
    stdout = _run(_python_block_after("## Python API"), tmp_path)
    assert "'agreement': 1.0" in stdout  # the SavedModel reproduces the slim student
    assert os.path.exists(tmp_path / "out" / "student.tflite")


def _citations():
    """(citing file, cited path) for every repository path a README, doc page or docstring names."""
    pattern = re.compile(r"(?<![\w/.])((?:docs|tests|benchmarks|hsd_tf|flags)/[\w./-]*\w\.(?:md|py|cfg|json|png))")
    link = re.compile(r"\]\(([\w./-]+\.(?:md|py|json|png))\)")
    sources = ["README.md", "main.py"] + [os.path.join(folder, name) for folder in ("hsd_tf", "benchmarks", "docs")
                                          for name in sorted(os.listdir(os.path.join(ROOT, folder)))
                                          if name.endswith((".py", ".md"))]
    for source in sources:
        with open(os.path.join(ROOT, source)) as f:
            text = f.read()
        for cited in pattern.findall(text):
            yield source, cited
        for cited in link.findall(text):  # markdown links are relative to the page
            yield source, os.path.normpath(os.path.join(os.path.dirname(source), cited))


def test_every_file_the_docs_and_docstrings_cite_exists():
    citations = list(_citations())
    assert len(citations) > 50 and ("hsd_tf/cascade.py", "docs/method.md") in citations
    assert ("docs/speed.md", "docs/deployment.md") in citations  # a link between pages resolves from its page
    missing = sorted({f"{source} cites {cited}" for source, cited in citations
                      if not os.path.exists(os.path.join(ROOT, cited))})
    assert not missing, "\n".join(missing)
