"""Prompts: the built-in ones (`report`, `summary`) and users' own plain template files.

`--prompt NAME` looks for `<data_dir>/prompts/NAME.md`, then a built-in NAME; `--prompt FILE`
reads that file. A template may use `$document_name`, `$pages` and `$max_output_tokens`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from longbatch.errors import PromptError
from longbatch.fsutil import slugify

SYSTEM_PROMPT = (
    "You are a meticulous analyst who writes long, complete, well-structured reports on long "
    "documents. You read the whole document before writing, follow its structure, keep exact "
    "figures and wording where they matter, and never invent content that is not in the document."
)


@dataclass(frozen=True)
class Prompt:
    name: str  # a slug: it names the report file and is part of each custom_id
    template: str
    sha256: str


def builtin_prompt_names() -> list[str]:
    folder = resources.files("longbatch") / "prompts"
    return sorted(p.name[:-3] for p in folder.iterdir() if p.name.endswith(".md"))


def load_prompt(spec: str, data_dir: Path) -> Prompt:
    path = Path(spec)
    if path.suffix and path.is_file():
        return _make(path.stem, path.read_text(encoding="utf-8"))
    user_file = data_dir / "prompts" / f"{spec}.md"
    if user_file.is_file():
        return _make(spec, user_file.read_text(encoding="utf-8"))
    builtin = resources.files("longbatch") / "prompts" / f"{spec}.md"
    if slugify(spec) == spec and builtin.is_file():
        return _make(spec, builtin.read_text(encoding="utf-8"))
    raise PromptError(
        f"Prompt {spec!r} not found: give a template file path, a name from {data_dir / 'prompts'}/, "
        f"or a built-in prompt ({', '.join(builtin_prompt_names())})."
    )


def load_prompts(specs: list[str], data_dir: Path) -> list[Prompt]:
    """Each prompt once; two different prompts that would share a report name are refused."""
    prompts: dict[str, Prompt] = {}
    for spec in specs:
        prompt = load_prompt(spec, data_dir)
        if prompt.name in prompts and prompts[prompt.name].sha256 != prompt.sha256:
            raise PromptError(f"Two prompts would both write reports named {prompt.name!r}: rename one file.")
        prompts[prompt.name] = prompt
    return list(prompts.values())


PLACEHOLDERS = ("document_name", "pages", "max_output_tokens")


def _make(name: str, template: str) -> Prompt:
    if not template.strip():
        raise PromptError(f"Prompt {name!r} is empty.")
    # A misspelt placeholder would reach the model as literal text: refuse it. (`$5` and `$$`
    # are not placeholders: a price and a literal dollar sign pass as they are.)
    unknown = sorted(set(Template(template).get_identifiers()) - set(PLACEHOLDERS))
    if unknown:
        raise PromptError(
            f"Prompt {name!r} uses unknown placeholder(s) {', '.join('$' + u for u in unknown)}; a template may use "
            f"{', '.join('$' + p for p in PLACEHOLDERS)} (write $$ for a literal dollar sign).")
    return Prompt(slugify(name, 16), template, hashlib.sha256(template.encode()).hexdigest())
