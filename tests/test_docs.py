"""The documentation's generated parts: the suite key tables come from the schema, every published run
folder says how it was made and becomes a page (docs/hooks.py; `mkdocs build --strict` runs in .ci/run)."""

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from anobench.runner import check_suite
from anobench.suites import Suite, describe_keys, load_suite, schema_tables, suite_keys

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "reports" / "published"


def hooks():
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_table_of_the_suite_schema_is_found_and_every_key_says_what_it_means():
    tables = schema_tables()
    assert {"", "[dataset]", "[[grid]]", "[measure]", "[[reference]]", "[bootstrap]", "[compare_to]"} <= set(tables)
    assert all(dataclasses.is_dataclass(cls) for cls in tables.values())
    for heading, cls in tables.items():
        described = describe_keys(cls)
        assert [k.key for k in described] == list(suite_keys(cls)), heading
        assert all(k.doc.strip() for k in described), f"a key of {heading or 'the suite'} has no doc"


def test_defaults_read_as_toml_would_write_them():
    keys = {k.key: k for k in describe_keys(Suite)}
    assert keys["name"].required and keys["name"].default is None
    assert keys["protocol"].default == '"strict"' and keys["seeds"].default == "[0]"
    assert keys["metrics"].default == '["image_auroc", "pixel_auroc", "aupro"]'
    assert keys["compare_to"].default is None and not keys["compare_to"].required  # left out by default
    dataset = {k.key: k for k in describe_keys(schema_tables()["[dataset]"])}
    assert dataset["classes"].default == '"all"'


def test_the_key_tables_list_every_key_of_every_table():
    markdown = hooks().suite_keys_markdown()
    for heading, cls in schema_tables().items():
        section = markdown.split(f"### {heading or 'Top level'}\n", 1)[1].split("\n### ", 1)[0]
        rows = re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE)
        assert rows == list(suite_keys(cls)), heading


def test_the_suites_page_asks_for_both_generated_sections_and_an_unknown_one_fails():
    module = hooks()
    page = (ROOT / "docs" / "suites.md").read_text()
    assert "<!-- generated: suites -->" in page and "<!-- generated: suite-keys -->" in page
    expanded = module.expand_markers(page)
    assert "<!-- generated" not in expanded and "| `smoke` |" in expanded and "| `cpu_threads` |" in expanded
    with pytest.raises(ValueError, match="unknown generated section 'nothing'"):
        module.expand_markers("<!-- generated: nothing -->")


@pytest.mark.parametrize("folder", sorted(p.name for p in PUBLISHED.iterdir() if p.is_dir()))
def test_every_published_run_folder_has_its_records_and_says_how_it_was_made(folder):
    path = PUBLISHED / folder
    if not (path / "records.jsonl").is_file():  # a folder of several runs: each has its records, the folder a README
        runs = [p for p in path.iterdir() if (p / "records.jsonl").is_file() and (p / "run.json").is_file()]
        assert runs and "Command" in (path / "README.md").read_text(), folder
        return
    assert (path / "records.jsonl").is_file() and (path / "run.json").is_file() and (path / "report.md").is_file()
    readme = (path / "README.md").read_text()
    for line in ("- Command: `bench run ", "- Commit: ", "- Machine: "):
        assert line in readme, f"{folder}/README.md lacks {line!r}"
    page = hooks().published_page(path)
    assert page.startswith(readme.rstrip()) and "[records.jsonl](records.jsonl)" in page
    assert "\n## Report: " in page  # the report follows, one level down


def test_the_published_index_links_every_run_page():
    index = hooks().published_index()
    for path in hooks().published_folders():
        assert f"]({path.name}/index.md)" in index


def test_the_suite_example_in_the_docs_is_a_valid_suite(tmp_path):
    page = (ROOT / "docs" / "suites.md").read_text()
    examples = [block for block in re.findall(r"```toml\n(.*?)```", page, flags=re.DOTALL) if "[[grid]]" in block]
    assert examples
    for number, block in enumerate(examples):
        path = tmp_path / f"example{number}.toml"
        path.write_text(block)
        suite = load_suite(str(path))
        check_suite(suite)
