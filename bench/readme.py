"""Copy each benchmark's markdown table (bench/results/<name>.md) into README.md between
`<!-- bench:<name> -->` and `<!-- /bench:<name> -->`, so the README shows measured numbers.

    python -m bench.readme
"""

from __future__ import annotations

import re
from pathlib import Path

from .common import RESULTS

README = Path(__file__).parents[1] / "README.md"


def main() -> None:
    text = README.read_text()
    for name in sorted(set(re.findall(r"<!-- bench:([\w-]+) -->", text))):
        table = RESULTS / f"{name}.md"
        if not table.exists():
            print(f"{name}: no results yet (run python -m bench.{name})")
            continue
        body = re.sub(r"\]\((?!http|bench/)([\w.-]+\.png)\)", r"](bench/results/\1)", table.read_text())
        # a result file's own headings sit under the README's "###" sections
        body = re.sub(r"^(#+) ", lambda m: "#" * min(len(m.group(1)) + 3, 6) + " ", body, flags=re.MULTILINE)
        block = f"<!-- bench:{name} -->\n{body.strip()}\n<!-- /bench:{name} -->"
        text = re.sub(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", lambda _, b=block: b, text,
                      flags=re.DOTALL)
        print(f"{name}: updated")
    README.write_text(text)


if __name__ == "__main__":
    main()
