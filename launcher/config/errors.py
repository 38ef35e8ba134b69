"""One report with every problem in a recipe, each naming file, key, expectation and a fix."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class Problem:
    path: str  # dotted key path, e.g. "optimizer.lr"; "" for the whole file
    message: str
    hint: str = ""
    where: str = ""  # "recipes/x.yaml:12" or "command line `a=b`"

    def render(self) -> str:
        key = f"`{self.path}`" if self.path else "(file)"
        head = f"{self.where}: {key}: {self.message}" if self.where else f"{key}: {self.message}"
        return head + (f"\n    HINT: {self.hint}" if self.hint else "")


@dataclass
class RecipeError(Exception):
    """Raised with every problem found, never just the first."""

    source: str
    problems: list[Problem] = field(default_factory=list)
    # The parsed recipe (overrides applied) when the file was a mapping: lets the planner add the
    # batch arithmetic's problems to the schema's in the same report.
    raw: dict | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        count = len(self.problems)
        lines = [f"{self.source}: {count} problem{'s' if count != 1 else ''}"]
        lines += ["  " + p.render().replace("\n", "\n  ") for p in self.problems]
        return "\n".join(lines)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    import difflib  # only a recipe with a mistake pays its import

    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean `{matches[0]}`?" if matches else ""
