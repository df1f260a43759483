"""The README's Python example runs as it stands there."""

import os
import re
import subprocess
import sys

from testing import ROOT


def _python_example():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    start = readme.index("```python", readme.index("## Python API")) + len("```python")
    return readme[start:readme.index("```", start)]


def test_the_readme_python_api_example_runs(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-c", _python_example()], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'agreement': 1.0" in result.stdout  # the SavedModel reproduces the slim student
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
    missing = sorted({f"{source} cites {cited}" for source, cited in citations
                      if not os.path.exists(os.path.join(ROOT, cited))})
    assert not missing, "\n".join(missing)
