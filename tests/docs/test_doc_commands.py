"""Every shell command in the code blocks of README.md and docs/*.md still works.

Commands are the lines of fenced code blocks (not ```python) that start with `python experiments/`, `ltray `,
`bash run.sh `, `ray job submit `, `docker compose ` or `python -m `, with backslash continuations joined and
trailing comments dropped, plus inline code spans that are whole `python experiments/...` commands. Each kind is checked without running anything heavy:
- sweep scripts run in this process with `--dry-run` appended and must exit 0 (no Ray, no MLflow, no data read);
- `ltray` commands: the real argparse parser accepts the flags, and the subcommand's `--help` exits 0;
- `bash run.sh <cmd>`: run.sh has the subcommand; `sweep` arguments are dry-run through experiments/sweep_colt.py;
- `ray job submit ... -- <command>`: the working dir exists and the entrypoint is checked as above;
- `docker compose`: the compose file exists; `python -m MODULE`: the module can be found.
Every repository path a command names (experiments/, docs/, docker/, bench/, ltray/) must exist.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from ltray.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PREFIXES = ("python experiments/", "ltray ", "bash run.sh ", "ray job submit ", "docker compose ", "python -m ")
REPO_DIRS = ("experiments/", "docs/", "docker/", "bench/", "ltray/")
LTRAY_GROUPS = ("splits", "pool", "mak")
FENCE = re.compile(r"^```(\S*)\s*$")


def code_block_lines(text: str) -> Iterator[str]:
    """Lines of fenced code blocks other than python ones, continuations joined."""
    language: str | None = None
    pending = ""
    for line in text.splitlines():
        fence = FENCE.match(line.strip())
        if fence:
            language = None if language is not None else fence.group(1)
            continue
        if language is None or language == "python":
            continue
        stripped = line.strip()
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        yield pending + stripped
        pending = ""


def inline_sweep_commands(text: str) -> Iterator[str]:
    """Inline code spans outside code blocks that are whole sweep-script commands (`python experiments/...`), as in
    the tables of docs/reproduce.md; other inline spans are often fragments (`ltray mak sample`) and are not run."""
    outside = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    for span in re.findall(r"`([^`\n]+)`", outside):
        if span.startswith("python experiments/"):
            yield span


def doc_commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for line in code_block_lines(text):
            command = line.removeprefix("$ ").strip()
            if command.startswith(PREFIXES):
                found.append((page.name, command))
        found += [(page.name, command) for command in inline_sweep_commands(text)]
    return found


COMMANDS = doc_commands()


def words(command: str) -> list[str]:
    return [os.path.expandvars(word) for word in shlex.split(command, comments=True)]


def check_repo_paths(argv: list[str]) -> None:
    for word in argv:
        value = word.split("=", 1)[-1]
        if value.startswith(REPO_DIRS):
            assert (ROOT / value).exists(), f"the command names {value}, which does not exist"


def load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"doc_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_sweep_script(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    script = ROOT / argv[0]
    assert script.is_file(), f"{argv[0]} does not exist"
    args = argv[1:]
    if "--help" in args or "-h" in args:
        with pytest.raises(SystemExit) as stop:
            load_script(script).main(args)
        assert stop.value.code == 0
        return
    code = load_script(script).main([*args, "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0, f"{' '.join(argv)} --dry-run exited {code}: {captured.err.strip()}"
    assert "nothing was started" in captured.out


def check_ltray(argv: list[str]) -> None:
    parser = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as stop:
        pytest.fail(f"ltray's parser rejects `ltray {' '.join(argv)}` (exit {stop.code})")
    command = argv[:2] if argv[0] in LTRAY_GROUPS else argv[:1]
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([*command, "--help"])
    assert stop.value.code == 0


def check_run_sh(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    run_sh = ROOT / "run.sh"
    assert run_sh.is_file()
    subcommand, rest = argv[0], argv[1:]
    assert re.search(rf"^\s*{re.escape(subcommand)}\)", run_sh.read_text(), flags=re.M), \
        f"run.sh has no '{subcommand}' command"
    if subcommand == "sweep":
        check_sweep_script(["experiments/sweep_colt.py", *rest], capsys)


def check(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    check_repo_paths(argv)
    if argv[0] == "python" and argv[1] == "-m":
        assert importlib.util.find_spec(argv[2]) is not None, f"module {argv[2]} not found"
    elif argv[0] == "python":
        check_sweep_script(argv[1:], capsys)
    elif argv[0] == "ltray":
        check_ltray(argv[1:])
    elif argv[0] == "bash":
        check_run_sh(argv[2:], capsys)
    elif argv[:3] == ["ray", "job", "submit"]:
        assert "--" in argv, "ray job submit needs `-- <entrypoint>`"
        if "--working-dir" in argv:
            assert (ROOT / argv[argv.index("--working-dir") + 1]).is_dir()
        check(argv[argv.index("--") + 1:], capsys)
    elif argv[:2] == ["docker", "compose"]:
        compose = argv[argv.index("-f") + 1] if "-f" in argv else "docker/docker-compose.yml"
        assert (ROOT / compose).is_file(), f"compose file {compose} not found"


def test_the_docs_hold_commands() -> None:
    pages = {page for page, _ in COMMANDS}
    assert {"README.md", "reproduce.md", "mlflow.md"} <= pages
    assert sum(command.startswith("python experiments/") for _, command in COMMANDS) >= 10


def test_continuations_and_comments_are_read() -> None:
    text = "```bash\nltray pool show pools/embedded \\\n    --grid g.png   # a comment\n```\n```python\nltray x\n```\n"
    assert list(code_block_lines(text)) == ["ltray pool show pools/embedded --grid g.png   # a comment"]
    assert words("ltray pool show p --grid g.png   # a comment") == ["ltray", "pool", "show", "p", "--grid", "g.png"]


@pytest.mark.parametrize(("page", "command"), COMMANDS, ids=[f"{p}:{c[:70]}" for p, c in COMMANDS])
def test_doc_command_still_works(page: str, command: str, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    check(words(command), capsys)
