"""No committed file names a path that exists on one particular machine (a home or work folder, an
interpreter of one setup): code defaults, docs, tests and records must read the same on every machine."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The roots where one machine keeps its own things. A path must start there (after a space, quote, "=",
# "(" or the line's start), so relative paths such as docs/work/ or ../shared/ are not flagged.
MACHINE_PATH = re.compile(r"(?:^|(?<=[\s\"'`=(]))(?:/work/|/root/|/home/[\w.-]+/|/Users/[\w.-]+/|[A-Za-z]:\\Users\\)")
# /tmp/<name> too, except in the files a published run wrote itself, which quote its command as it was
# typed (an --out folder under /tmp); they are kept as written.
TEMP_PATH = re.compile(r"(?:^|(?<=[\s\"'`=(]))/tmp/\w")
RUN_WRITTEN = re.compile(r"reports/published/[^/]+/(run\.json|records\.jsonl|report\.md|report\.html)$")


def machine_paths(relative: str, text: str) -> list[str]:
    """``file:line: text`` for every line of ``text`` that names a machine's own path."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if MACHINE_PATH.search(line) or (TEMP_PATH.search(line) and not RUN_WRITTEN.match(relative)):
            found.append(f"{relative}:{number}: {line.strip()[:160]}")
    return found


@pytest.mark.parametrize(("line", "flagged"), [
    ('default="/work/anomalib-venv/bin/python"', True),
    ("  path: /root/.cache/x", True),
    ("see /home/alice/data", True),
    ("W=/tmp/cflow-peer", True),
    (r"C:\Users\bob\data", True),
    ("--data-root ../shared/data/bsdata", False),
    ("docs/work/notes.md and site/home/index.html", False),
    ("bench run --suite smoke --out runs/smoke", False),
])
def test_the_scan_flags_machine_paths_and_nothing_else(line, flagged):
    assert bool(machine_paths("docs/x.md", line)) == flagged


def test_a_published_run_may_quote_its_temporary_out_folder_but_no_machine_path():
    assert not machine_paths("reports/published/r/report.md", "- Command: bench run --out /tmp/t6c")
    assert machine_paths("reports/published/r/README.md", "- Command: `bench run --out /tmp/t6c`")
    assert machine_paths("reports/published/r/run.json", '"path": "/work/main/bench/suites/smoke.toml"')


def test_no_committed_file_names_a_path_of_one_machine():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the committed files cannot be listed")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    found = []
    for relative in files.decode().split("\0"):
        path = ROOT / relative
        if not relative or relative == "tests/test_portable.py" or not path.is_file():  # this file's examples
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # images and other binary files
            continue
        found += machine_paths(relative, data.decode("utf-8", errors="replace"))
    assert not found, "committed files name a path of one machine:\n" + "\n".join(found)
