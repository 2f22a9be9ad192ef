"""Installation and import hygiene: one top-level name, and the commands that only read records import
no torch, timm or FrEIA."""

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

PUBLISHED = REPO / "reports" / "published" / "paper-table6-cpu-2core"


def run_python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_the_only_top_level_import_name_is_anobench(tmp_path):
    result = run_python(f"""
        import importlib.util
        import anobench, anobench.methods, anobench.datasets, anobench.reports
        for name in ("bench", "methods", "reports"):
            assert importlib.util.find_spec(name) is None, name
        spec = importlib.util.find_spec("datasets")  # None, or Hugging Face's: never ours
        assert spec is None or not spec.origin.startswith({str(REPO)!r}), spec.origin
        print("ok")
    """, cwd=tmp_path)
    assert result.stdout.strip() == "ok", result.stderr


BLOCK_HEAVY = """
    import sys
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "timm", "FrEIA", "torchvision"):
                raise ImportError(f"{name} imported by a command that must not need it")
    sys.meta_path.insert(0, Blocker())
    from anobench.cli import main
    sys.argv = ["bench", *ARGS]
    try:
        main()
    except SystemExit as exit:
        sys.exit(exit.code)
"""


@pytest.mark.parametrize("args", [
    ["--help"], ["report", "--help"],
    ["report", "{run}", "--format", "md"],
    ["compare", "{run}", "{run}"],
    ["export", "{run}", "--output", "{tmp}/flat.csv"],
    ["results", "{run}", "{run}", "--format", "html", "--output", "{tmp}/leaderboard.html"],
    ["list", "suites"],
], ids=lambda a: " ".join(a[:2]))
def test_commands_that_read_records_import_no_torch(args, tmp_path):
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(PUBLISHED), str(run)], check=True)
    args = [a.format(run=run, tmp=tmp_path) for a in args]
    result = run_python(f"ARGS = {args!r}\n" + textwrap.dedent(BLOCK_HEAVY), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
