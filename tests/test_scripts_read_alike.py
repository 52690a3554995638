"""Every script reads alike: a short header that names its paper and docs page, `--help` that says what the script
does, one flag name for one thing, plain imports of `shared`, and the formatter on everywhere."""

import ast
import dataclasses
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tyro

from shared.runs import help_description

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["ama", "b2_diffurl", "bleuberi", "cream", "crm", "dr_irl", "l2calib", "paco_grpo", "ppo_mc", "self_prm"]
MAX_HEADER_LINES = 45  # the module docstring: the idea, the key equations and the commands; results live in docs/


def source(name: str) -> str:
    return (ROOT / "algos" / f"{name}.py").read_text()


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_header_names_the_paper_and_a_docs_page_and_stays_short(name):
    text = source(name)
    first_line = text.splitlines()[0]
    assert first_line.startswith("# ") and "arxiv" in first_line.lower(), "line 1 names the paper"
    assert f"docs/{name}.md" in first_line, "line 1 names the docs page"
    assert (ROOT / "docs" / f"{name}.md").exists()
    docstring = ast.get_docstring(ast.parse(text), clean=False)
    assert docstring is not None
    assert len(docstring.splitlines()) <= MAX_HEADER_LINES


@pytest.mark.parametrize("name", SCRIPTS)
def test_no_path_edits_no_formatter_switches_no_private_citations(name):
    text = source(name)
    for forbidden in ("sys.path", "E402", "fmt: skip", "fmt: off", "[card"):
        assert forbidden not in text, forbidden
    assert "from shared." in text
    assert text.rstrip().endswith(
        "main(parse_args(Args, __doc__))  # --help opens with the docstring's first paragraph"
    )


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_opens_with_what_the_script_does_and_its_offline_command(name, capsys):
    module = importlib.import_module(f"algos.{name}")
    description = help_description(module.__doc__)
    assert f"python algos/{name}.py" in description  # the offline command, in the first paragraph
    with pytest.raises(SystemExit) as stopped:
        tyro.cli(module.Args, args=["--help"], description=description)
    assert stopped.value.code == 0
    shown = capsys.readouterr().out
    first_words = " ".join(description.split()[:6])
    assert first_words in " ".join(shown.split()[:60]), "--help opens with the description"


@pytest.mark.parametrize("name", SCRIPTS)
def test_one_flag_name_for_one_thing(name):
    module = importlib.import_module(f"algos.{name}")
    fields = [field.name for field in dataclasses.fields(module.Args)]
    assert "num_threads" in fields  # not --threads or --torch-threads
    assert any(field == "learning_rate" or field.endswith("_learning_rate") for field in fields)
    for field in fields:
        assert field != "lr" and not field.endswith("_lr"), (
            f"--{field}: rates are --learning-rate / --<phase>-learning-rate"
        )
        assert field not in ("threads", "torch_threads"), f"--{field}: threads are --num-threads"
        assert not field.startswith("no_"), f"--{field}: a bool flag is named for what it turns on (tyro adds --no-)"


def test_ruff_check_and_format_pass():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")  # the test extra has it
    assert ruff is not None, "pip install -e '.[test]' installs ruff"
    folders = ["algos", "shared", "tests", "benchmarks"]
    checked = subprocess.run([ruff, "check", *folders], cwd=ROOT, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout[-3000:]
    formatted = subprocess.run([ruff, "format", "--check", *folders], cwd=ROOT, capture_output=True, text=True)
    assert formatted.returncode == 0, formatted.stdout[-3000:]
