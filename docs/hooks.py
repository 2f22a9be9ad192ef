"""MkDocs hooks: the pages and parts of pages generated from the code and the published run folders, so
that they cannot drift from what they describe.

- ``<!-- generated: suites -->`` and ``<!-- generated: suite-keys -->`` in a page become the shipped suites
  and the table of every suite key, from ``anobench.suites`` (its schema and the suite files).
- Every folder of ``reports/published/`` becomes the page ``published/<folder>/``: its ``README.md`` (the
  command, commit and machine), then its ``report.md`` with the figures beside it; ``published/`` lists
  them under the folder's own ``README.md``. Nothing in them is retyped.
- The package's layers live in folders not named after the import name (``bench/`` is ``anobench``,
  ``methods/`` is ``anobench.methods`` ...), so a temporary tree of links under the import names is put
  first on the search path: mkdocstrings reads the source from there, and the generators above import
  ``anobench.suites`` from there, so the site builds without anobench (or torch) installed.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "reports" / "published"
MARKER = re.compile(r"<!-- generated: ([a-z-]+) -->")
_source_tree: Path | None = None


# ----------------------------------------------------------------------------------------------------------
# generated markdown


def table_cell(text: str) -> str:
    return text.replace("|", r"\|")


def suite_keys_markdown() -> str:
    """One table per table of the suite schema: key, what it must be, default, meaning."""
    from anobench.suites import describe_keys, schema_tables

    parts = []
    for heading, cls in schema_tables().items():
        parts.append(f"### {heading or 'Top level'}\n")
        parts.append("| key | must be | default | meaning |\n|---|---|---|---|")
        for key in describe_keys(cls):
            default = "required" if key.required else "none" if key.default is None else f"`{key.default}`"
            parts.append(f"| `{key.key}` | {key.expects} | {default} | {table_cell(key.doc)} |")
        parts.append("")
    return "\n".join(parts)


def suites_markdown() -> str:
    """The shipped suites with their descriptions, as ``bench list suites`` finds them."""
    from anobench.suites import available_suites, load_suite

    rows = ["| suite | version | what |", "|---|---:|---|"]
    for name in sorted(available_suites()):
        suite = load_suite(name)
        rows.append(f"| `{name}` | {suite.version} | {table_cell(suite.description)} |")
    return "\n".join(rows) + "\n"


GENERATORS = {"suites": suites_markdown, "suite-keys": suite_keys_markdown}


def expand_markers(markdown: str) -> str:
    """Every ``<!-- generated: NAME -->`` replaced by its generator's markdown (an unknown name fails)."""
    def expand(match: re.Match) -> str:
        if match.group(1) not in GENERATORS:
            raise ValueError(f"unknown generated section {match.group(1)!r}; known: {', '.join(GENERATORS)}")
        return GENERATORS[match.group(1)]()
    return MARKER.sub(expand, markdown)


def published_folders() -> list[Path]:
    return sorted(p for p in PUBLISHED.iterdir() if (p / "records.jsonl").is_file())


# a published folder's files the site serves beside its page, for readers to check the page against
PUBLISHED_FILES = ("records.jsonl", "run.json", "report.html")


def published_page(folder: Path) -> str:
    """A published run folder as one page: its README, links to its records, then its report (headings one
    level down)."""
    readme = (folder / "README.md").read_text()
    report = (folder / "report.md").read_text()
    report = re.sub(r"^(#+) ", r"#\1 ", report, flags=re.MULTILINE)
    files = ", ".join(f"[{name}]({name})" for name in PUBLISHED_FILES if (folder / name).is_file())
    return f"{readme.rstrip()}\n\nThe folder's files: {files}.\n\n{report}"


def published_index() -> str:
    readme = (PUBLISHED / "README.md").read_text()
    links = [f"- [{(f / 'README.md').read_text().splitlines()[0].lstrip('# ')}]({f.name}/index.md)"
             for f in published_folders()]
    return readme.rstrip() + "\n\n## The runs\n\n" + "\n".join(links) + "\n"


# ----------------------------------------------------------------------------------------------------------
# MkDocs events


@event_priority(100)  # before mkdocstrings reads the search path
def on_config(config):
    """Link the package's folders under their import names for mkdocstrings (removed after the build)."""
    global _source_tree
    _source_tree = Path(tempfile.mkdtemp(prefix="anobench-docs-"))
    with open(ROOT / "pyproject.toml", "rb") as f:
        package_dirs = tomllib.load(f)["tool"]["setuptools"]["package-dir"]  # import name → folder
    for package, folder in package_dirs.items():
        target = _source_tree.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for entry in (ROOT / folder).iterdir():
            if entry.name != "__pycache__" and not (target / entry.name).exists():
                (target / entry.name).symlink_to(entry)
    sys.path.insert(0, str(_source_tree))
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, "published/index.md", content=published_index()))
    for folder in published_folders():
        files.append(File.generated(config, f"published/{folder.name}/index.md", content=published_page(folder)))
        for asset in [*sorted((folder / "figures").glob("*.png")), *(folder / name for name in PUBLISHED_FILES)]:
            if asset.is_file():
                uri = f"published/{folder.name}/{asset.relative_to(folder).as_posix()}"
                files.append(File.generated(config, uri, abs_src_path=str(asset)))
    return files


def on_page_markdown(markdown, page, config, files):
    return expand_markers(markdown)


def on_post_build(config):
    global _source_tree
    if _source_tree is not None:
        sys.path.remove(str(_source_tree))
        shutil.rmtree(_source_tree, ignore_errors=True)
        _source_tree = None


def on_build_error(error):
    on_post_build(None)
