"""Re-run the README's console blocks and write their real output back (a test checks it is current).

Every ``$ command`` line of a ```` ```console ```` block in README.md runs in bash, as printed, in a
scratch directory holding a copy of ``docs/runs`` (so the committed samples are read from another
path, as in a fresh clone); the lines after it up to the next command are its output (stdout and
stderr, as a terminal shows them). `normalize` masks what must differ between runs: the ids of MLflow
runs the commands create, log times, the scratch directory.

    .venv/bin/python scripts/gen_readme_output.py          # rewrite README.md
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_BLOCK = re.compile(r"^```console\n(.*?)^```$", re.S | re.M)
# Terminal settings a user's shell may carry that change rich's output; the README shows the defaults.
_UNSET = ("COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "MLFLOW_TRACKING_URI",
          "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "MLFLOW_LOGGING_LEVEL")


@dataclass
class Command:
    line: str    # the command as printed, without "$ "
    output: str  # what the README shows after it


def parse_block(body: str) -> list[Command]:
    commands: list[Command] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            commands.append(Command(line[2:], ""))
        elif commands:
            commands[-1].output += line + "\n"
    for c in commands:
        c.output = c.output.strip("\n")
    return commands


def format_block(commands: list[Command]) -> str:
    """Commands and outputs, a blank line between commands."""
    return "\n".join(f"$ {c.line}\n{c.output}\n" if c.output else f"$ {c.line}\n" for c in commands)


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _UNSET}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # this venv's wbtrace
    return env


def scratch_dir(into: Path) -> Path:
    """A working directory with the committed runs copied in: the README's paths resolve, elsewhere."""
    shutil.copytree(ROOT / "docs" / "runs", into / "docs" / "runs")
    return into


def run(line: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    return "\n".join(x.rstrip() for x in done.stdout.splitlines()).strip("\n")


def render(readme: str, cwd: Path) -> tuple[str, list[tuple[Command, str]]]:
    """The README with every console block's output replaced by a fresh run; also (command, got) pairs."""
    env = environment()
    ran: list[tuple[Command, str]] = []

    def redo(m: re.Match) -> str:
        commands = parse_block(m.group(1))
        fresh = []
        for c in commands:
            got = run(c.line, cwd, env)
            ran.append((c, got))
            fresh.append(Command(c.line, got))
        return f"```console\n{format_block(fresh)}```"

    return _BLOCK.sub(redo, readme), ran


def normalize(text: str, cwd: Path | None = None) -> str:
    """Mask what must vary between runs; strip line ends (invisible in a terminal)."""
    if cwd is not None:
        text = text.replace(str(cwd), "<cwd>")
    text = re.sub(r"MLflow run [0-9a-f]{32} at", "MLflow run <new run id> at", text)
    text = re.sub(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d", "<time>", text)
    return "\n".join(x.rstrip() for x in text.splitlines()).strip("\n")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="wbtrace-readme-") as tmp:
        text, _ = render(README.read_text(), scratch_dir(Path(tmp)))
    README.write_text(text)
    print(f"wrote {README}")


if __name__ == "__main__":
    main()
