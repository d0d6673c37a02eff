"""Regenerate the generated parts of docs/trainer.md (config keys, metrics) from wbtrace.dapo."""

import re
from pathlib import Path

from wbtrace.dapo.config import config_reference
from wbtrace.dapo.metrics import METRICS

DOC = Path(__file__).resolve().parents[1] / "docs" / "trainer.md"


def replace(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def main() -> None:
    text = DOC.read_text()
    text = replace(text, "config", config_reference())
    metrics = "\n".join(["| metric | meaning |", "|---|---|"] + [f"| `{k}` | {v} |" for k, v in METRICS.items()])
    text = replace(text, "metrics", metrics)
    DOC.write_text(text)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
