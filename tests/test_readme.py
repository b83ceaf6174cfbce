"""The README's two commands are the ones CI and users run."""
import re

from conftest import REPO


def _commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", readme)[:2]


def test_readme_opens_with_install_and_run_commands():
    main_job, tests = _commands()
    assert main_job.endswith("pip install -e . && iwin-seg predict")
    assert tests.endswith('pip install -e ".[dev]" && pytest -q')


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert _commands()[1] in ci.splitlines()
