"""The docs stay a map: README fits on one screen, every page is in the navigation, and
every config group, option and command has a place in the reference that the navigation
reaches. (`make docs-build`, run by CI, builds the site strictly: broken links fail it.)"""

from __future__ import annotations

import re

import yaml

from ecg_experiments.config import CONFIG_DIR, PROJECT_ROOT

DOCS = PROJECT_ROOT / "docs"
COMMANDS = ("train", "evaluate", "predict", "explain", "export", "explore", "prepare", "compare",
            "ensemble")


def _nav_pages() -> list[str]:
    config = yaml.load((PROJECT_ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)

    def pages(node: object) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [p for item in node for p in pages(item)]
        if isinstance(node, dict):
            return [p for value in node.values() for p in pages(value)]
        return []

    return pages(config["nav"])


def test_readme_fits_on_one_screen_and_gives_the_test_command() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 150
    assert "make test" in readme
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make docs-build" in ci and "make lint" in ci


def test_every_docs_page_is_in_the_navigation() -> None:
    nav = _nav_pages()
    on_disk = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(nav) == on_disk


def test_every_config_group_option_and_command_has_a_reference_entry() -> None:
    assert "configuration.md" in _nav_pages()
    reference = (DOCS / "configuration.md").read_text()
    headings = set(re.findall(r"^#+ (.+)$", reference, flags=re.M))
    missing = []
    for folder in sorted(p for p in CONFIG_DIR.rglob("*") if p.is_dir()):
        group = folder.relative_to(CONFIG_DIR).as_posix()
        if group not in headings and f"`{group}`" not in reference:
            missing.append(f"group {group}")
        for option in sorted(folder.glob("*.yaml")):
            if option.stem not in reference:
                missing.append(f"option {group}={option.stem}")
    missing += [f"command {c}" for c in COMMANDS if f"ecg_experiments.{c}" not in reference]
    assert not missing, missing
