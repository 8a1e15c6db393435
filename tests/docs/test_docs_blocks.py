"""Every runnable code block of docs/ runs (tests/docs/blocks.py has the markers).

- yaml: loaded and validated with meshlib's loader, as ``meshctl validate`` does; a block
  marked invalid must be refused with the message the page says.
- python: run as a program (or only compiled, for a fragment).
- bash: the runnable blocks of one page are one shell session, run in order word for word as
  a reader types them into one terminal, on a free port instead of 15010.
- text: output samples; not run (each was produced by running the commands above it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from meshlib.errors import ConfigError
from meshlib.policy.loader import load_text
from tests.docs.blocks import DOCS, LANGUAGES, ROOT, Block, all_blocks, blocks, pages
from tests.servers import free_port
from tests.shell import run_bash

BLOCKS = all_blocks()


def _ids(block: Block) -> str:
    return block.where


def _of(language: str) -> list[Block]:
    return [block for block in BLOCKS if block.language == language]


def test_every_block_says_what_it_is() -> None:
    for block in BLOCKS:
        assert block.language in LANGUAGES, f"{block.where}: fence language {block.language!r}"
        if block.marker == "not run":
            assert block.argument, f"{block.where}: say why it is not run"
            assert block.language in ("bash", "python"), block.where
        if block.marker in ("invalid", "file"):
            assert block.argument, f"{block.where}: {block.marker} needs an argument"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.marker == "file"], ids=_ids)
def test_a_block_that_shows_a_file_is_that_file(block: Block) -> None:
    assert block.code == (DOCS / block.argument).read_text(encoding="utf-8"), block.where


@pytest.mark.parametrize("block", _of("yaml"), ids=_ids)
def test_yaml_blocks_validate(block: Block) -> None:
    if block.marker == "fragment":
        list(yaml.safe_load_all(block.code))
        return
    if block.marker == "invalid":
        with pytest.raises(ConfigError) as refused:
            load_text(block.code, source=block.where)
        messages = "\n".join(str(issue) for issue in refused.value.issues)
        assert block.argument in messages, f"{block.where}: refused, but with:\n{messages}"
        return
    loaded = load_text(block.code, source=block.where)
    assert loaded.resources or loaded.skipped, f"{block.where}: no resources"


@pytest.mark.parametrize("block", _of("python"), ids=_ids)
def test_python_blocks_run(block: Block, tmp_path: Path) -> None:
    compile(block.code, block.where, "exec")
    if block.marker in ("fragment", "not run"):
        return
    script = tmp_path / "block.py"
    script.write_text(block.code)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=_environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{block.where}:\n{result.stdout}{result.stderr}"


def _environment(tmp_path: Path, port: int | None = None) -> dict[str, str]:
    """The reader's shell: the venv first, no mesh settings of our own leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "MESHCTL_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["TMPDIR"] = str(tmp_path)
    env["HOME"] = str(tmp_path / "home")  # meshctl's default data dir and token: not the user's
    if port is not None:
        env["MESHCTL_SERVER"] = f"http://127.0.0.1:{port}"
    return env


def _session(page: Path) -> str:
    runnable = [b for b in blocks(page) if b.language == "bash" and b.marker != "not run"]
    return "".join(b.code for b in runnable)


SESSIONS = [page for page in pages() if _session(page)]


@pytest.mark.parametrize("page", SESSIONS, ids=[p.name for p in SESSIONS])
def test_bash_blocks_run_as_one_session(page: Path, tmp_path: Path) -> None:
    port = free_port()  # the page's 15010, moved so that nothing else on the machine collides
    script = _session(page).replace("15010", str(port))
    script = script.replace("meshctl serve ", f"meshctl serve --port {port} ")
    # `source .venv/bin/activate` works from a clone; the test runs in whatever venv runs it.
    script = re.sub(r"^source \.venv/bin/activate\n", "", script, flags=re.M)
    (tmp_path / "home").mkdir()
    # Whatever the page left running (it should stop what it starts) goes with its group.
    returncode, out = run_bash(script, cwd=ROOT, env=_environment(tmp_path, port), timeout=60)
    assert returncode == 0, f"{page.name}:\n{out}"
    for expected in _expectations(page):
        assert expected in out, f"{page.name}: {expected!r} not in:\n{out}"


def _expectations(page: Path) -> list[str]:
    """Lines a page's session must print: those of ``<!-- expect: ... -->`` comments."""
    return re.findall(r"<!--\s*expect:\s*(.*?)\s*-->", page.read_text(encoding="utf-8"))


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as '-'."""
    out = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", pages(), ids=[p.name for p in pages()])
def test_relative_links_resolve(page: Path) -> None:
    for target in _LINK.findall(page.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: link to {target}: no such file"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{page.name}: link to {target}: no such heading"
