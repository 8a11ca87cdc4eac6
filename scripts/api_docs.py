"""Write ``docs/api.md`` from the docstrings, so that it cannot drift from the code.

    python -m scripts.api_docs            # rewrite docs/api.md
    python -m scripts.api_docs --check    # exit 1 if docs/api.md is not what the code says

Every name in the ``__all__`` of the public modules below is documented once, where it first
appears (the top-level package first), with its signature, defaults included, and its docstring
turned into Markdown (Google-style sections become lists, doctests become code blocks). A test
(``tests/core/test_api_docs.py``) fails when the committed file differs from the output.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "api.md"

#: The public modules, in the order of the page.
MODULES = (
    "aot_losses",
    "aot_losses.ot",
    "aot_losses.losses",
    "aot_losses.nn",
    "aot_losses.penalties",
    "aot_losses.baselines",
    "aot_losses.diagnostics",
    "aot_losses.sorting",
    "aot_losses.distributed",
    "aot_losses.testing",
    "aot_losses.testing.oracles",
    "aot_losses.testing.strategies",
    "aot_losses.testing.checkers",
    "aot_losses.integrations",
    "aot_losses.integrations.trl",
)

HEADER = """# API

Every public name of `aot-losses`, its signature and its docstring, generated from the code by
`python -m scripts.api_docs` (`tests/core/test_api_docs.py` fails when this page is out of date: do
not edit it by hand). Shapes are written out; `B` is a batch of pairs, `n` chosen and `m`
rejected samples. The examples run as doctests in CI. Errors: [errors.md](errors.md); the math:
[math.md](math.md); sorting backends: [sorting.md](sorting.md); global-batch sorting:
[distributed.md](distributed.md); the testing kit: [testing.md](testing.md); TRL:
[trl.md](trl.md).
"""

#: Signatures with more parameters are elided (configs that inherit a framework's fields).
_MAX_PARAMETERS = 20
_SECTIONS = ("Args", "Returns", "Raises", "Example", "Examples", "Attributes", "Yields")
_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj):`~?([^`]+)`")


def render() -> str:
    """The whole page."""
    documented: dict[int, str] = {}
    parts = [HEADER]
    for name in MODULES:
        parts.append(_module(importlib.import_module(name), documented))
    return "\n".join(parts).rstrip() + "\n"


def _module(module: ModuleType, documented: dict[int, str]) -> str:
    lines = [f"## `{module.__name__}`", "", _markdown(inspect.getdoc(module) or ""), ""]
    for attr in module.__all__:
        obj = getattr(module, attr)
        if inspect.ismodule(obj):
            lines += [f"- `{attr}`: the module `{obj.__name__}` (below).", ""]
            continue
        qualified = f"{module.__name__}.{attr}"
        if callable(obj) and id(obj) in documented:
            lines += [f"- `{attr}`: see `{documented[id(obj)]}` above.", ""]
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            documented[id(obj)] = qualified
            lines += [f"### `{qualified}`", "", "```python", _signature(attr, obj), "```", ""]
            lines += [_markdown(inspect.getdoc(obj) or ""), ""]
        else:
            lines += [f"- `{attr} = {_value(obj)}`", ""]
    return "\n".join(lines)


def _signature(name: str, obj: object) -> str:
    """``name(parameters) -> return``, one parameter a line when long; annotations as written
    in the source."""
    try:
        signature = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return name
    if len(signature.parameters) > _MAX_PARAMETERS:  # a TRL config: its fields are TRL's
        return f"{name}(...)"
    params: list[str] = []
    for p in signature.parameters.values():
        if p.kind is p.KEYWORD_ONLY and not any(x.startswith("*") for x in params):
            params.append("*")
        stars: dict[object, str] = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}
        text = stars.get(p.kind, "") + p.name
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            default = _value(p.default)
            text += f" = {default}" if p.annotation is not p.empty else f"={default}"
        params.append(text)
    returns = signature.return_annotation
    tail = (
        "" if returns is signature.empty or inspect.isclass(obj) else f" -> {_annotation(returns)}"
    )
    one_line = f"{name}({', '.join(params)}){tail}"
    if len(one_line) <= 100:
        return one_line
    return f"{name}(\n" + "".join(f"    {p},\n" for p in params) + f"){tail}"


def _annotation(annotation: object) -> str:
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def _value(obj: object) -> str:
    """A constant as written (functions by name: their repr holds an address)."""
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k!r}: {_value(v)}" for k, v in obj.items()) + "}"
    if inspect.isfunction(obj):
        return obj.__name__
    return repr(obj)


def _markdown(doc: str) -> str:
    """A Google-style docstring as Markdown: sections as bold headings with lists, examples
    and literal blocks fenced, Sphinx roles as code."""
    doc = _ROLE.sub(lambda m: f"``{m.group(1)}``", doc)
    out: list[str] = []
    lines = doc.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        header = line.strip().rstrip(":")
        if line == line.lstrip() and line.endswith(":") and header in _SECTIONS:
            body, i = _indented(lines, i + 1)
            out += [f"**{header}**", ""]
            if header.startswith("Example"):
                out += _fenced(body)
            elif header in ("Returns", "Yields"):
                out += [" ".join(x.strip() for x in body if x.strip())]
            else:
                out += _items(body)
            out.append("")
            continue
        if line.rstrip().endswith("::") or line.strip().startswith(".. math::"):
            math = line.strip().removeprefix(".. math::").strip()
            out.append(line.rstrip()[:-1] if line.rstrip().endswith("::") else "")
            body, i = _indented(lines, i + 1)
            out += _fenced(([math] if math else []) + body)
            continue
        out.append(line)
        i += 1
    return "\n".join(out).strip()


def _indented(lines: list[str], start: int) -> tuple[list[str], int]:
    """The block of indented (or blank) lines from ``start``, dedented, and where it ends."""
    end = start
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(" ")):
        end += 1
    block = lines[start:end]
    while block and not block[-1].strip():
        block.pop()
    width = min((len(x) - len(x.lstrip()) for x in block if x.strip()), default=0)
    return [x[width:] for x in block], end


def _items(body: list[str]) -> list[str]:
    """``name: text`` entries (continuation lines indented) as a Markdown list."""
    items: list[str] = []
    for line in body:
        if not line.strip():
            continue
        if line.startswith(" ") and items:
            items[-1] += " " + line.strip()
        else:
            items.append("- " + line.strip())
    return items


def _fenced(body: list[str]) -> list[str]:
    while body and not body[0].strip():
        body = body[1:]
    if not body:
        return []
    return ["```python", *body, "```", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if API.read_text() != text:
            print(f"{API} is out of date: run python -m scripts.api_docs", file=sys.stderr)
            raise SystemExit(1)
        return
    API.write_text(text)


if __name__ == "__main__":
    main()
