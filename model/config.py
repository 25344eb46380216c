"""The configuration parts the batch job and the endpoint share, and the command line made from them.

Both configurations (`jobs.spec.JobSpec`, `serving.config.ServingConfig`) are nested pydantic models
whose sections are the same types where the concept is the same: `engine` (`model.engine.EngineConfig`),
`pages` (`PagesConfig`), `audio` (`AudioConfig`) and `storage` (`connectors.storage.StorageConfig`).
A setting is one field in one section; the YAML file, the Python object and the command line all
name it by that field.

`add_arguments` turns a configuration class into argparse options, one group per section (its
docstring is the group's title), one option per field: `--<field>` with dashes, or the field's
`json_schema_extra["flag"]` where users already type another name. `given_values` reads the parsed
options back as a nested mapping of what was given, to lay over a YAML file (`merge`) before the
model validates the whole; `nest` does the same for `section.field=value` pairs.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class PagesConfig(BaseModel):
    """pages: images and documents"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_image_pixels: int = Field(
        100_000_000, ge=1, description="decoded pixels per image or page; more is refused (a bomb or a mistake)")


class AudioConfig(BaseModel):
    """audio: recordings, cut into model calls (model.inputs.audio_chunks)"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    segmentation: Literal["vad", "fixed"] = Field(
        "vad", description="vad: cut at pauses and send only speech; fixed: windows of chunk_s with overlap_s")
    pack: Literal["window", "utterance"] | None = Field(
        None, description="speech per model call: up to the window, or one utterance (default: the checkpoint's)")
    chunk_s: float | None = Field(
        None, ge=1.0, description="longest chunk in seconds (default and maximum: the checkpoint's audio window)",
        json_schema_extra={"flag": "--chunk-seconds"})
    overlap_s: float = Field(2.0, ge=0, description="overlap of fixed windows, seconds",
                             json_schema_extra={"flag": "--overlap-seconds"})
    max_audio_seconds: float = Field(4 * 3600.0, gt=0, description="longest recording; longer is refused")

    def to_segmentation(self):
        """The settings as `model.inputs.audio_chunks.Segmentation`."""
        from model.inputs.audio_chunks import Segmentation

        return Segmentation(mode=self.segmentation, pack=self.pack, max_chunk_s=self.chunk_s, overlap_s=self.overlap_s)


# -- command line ------------------------------------------------------------------------------------


def _section(annotation) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _plain(annotation):
    """`X | None` -> X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _flag(name: str, field) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return extra.get("flag") or "--" + name.replace("_", "-")


def _fields(config_cls: type[BaseModel]):
    """(group title, group description, path, field name, field) for every option, top level first."""
    for name, field in config_cls.model_fields.items():
        if _section(field.annotation) is None:
            yield None, None, (name,), name, field
    for name, field in config_cls.model_fields.items():
        section = _section(field.annotation)
        if section is not None:
            title, _, rest = (section.__doc__ or name).partition(":")
            for sub, sub_field in section.model_fields.items():
                yield title.strip(), rest.strip() or None, (name, sub), sub, sub_field


def flags(config_cls: type[BaseModel]) -> dict[tuple[str, ...], str]:
    """Field path -> its command-line option."""
    return {path: _flag(name, field) for _, _, path, name, field in _fields(config_cls)}


def add_arguments(parser: argparse.ArgumentParser, config_cls: type[BaseModel], *, title: str) -> None:
    """One option per field of `config_cls`, grouped by section; `title` names the top-level group."""
    groups: dict[str | None, argparse._ArgumentGroup] = {None: parser.add_argument_group(title)}
    for group, description, path, name, field in _fields(config_cls):
        if group not in groups:
            groups[group] = parser.add_argument_group(group, description)
        kind = _plain(field.annotation)
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        options: dict[str, Any] = {"dest": ".".join(path), "default": None, "help": _help(field),
                                   "metavar": extra.get("metavar") or name.upper()}
        if kind is bool:
            options.update(nargs="?", const="true", metavar="true|false")
        elif typing.get_origin(kind) is Literal:
            choices = typing.get_args(kind)
            options.update(type=type(choices[0]), choices=choices, metavar=None)
        elif kind in (int, float, str):
            options["type"] = kind
        elif typing.get_origin(kind) is list and extra.get("repeat"):
            options["action"] = "append"
        elif kind is dict or typing.get_origin(kind) is dict:
            options.update(type=_json, metavar=extra.get("metavar") or "JSON")
        groups[group].add_argument(_flag(name, field), **options)


def _json(text: str):
    return json.loads(text)


_json.__name__ = "JSON"  # argparse names the type in its message: "invalid JSON value: ..."


def _help(field) -> str:
    text = field.description or ""
    default = field.get_default(call_default_factory=True)
    if field.is_required():
        return (text + " (required)").strip()
    if default not in (None, {}, [], ()):
        text = f"{text} (default: {_shown(default)})".strip()
    return text.replace("%", "%%")


def given_values(ns: argparse.Namespace, config_cls: type[BaseModel]) -> dict:
    """The options given on the command line as a nested mapping of field values."""
    values: dict = {}
    for _, _, path, _, _ in _fields(config_cls):
        value = getattr(ns, ".".join(path), None)
        if value is None:
            continue
        target = values
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
    return values


def nest(values: dict) -> dict:
    """Dotted keys as sections: {"engine.model": "m"} -> {"engine": {"model": "m"}} (key=value
    interfaces such as `serve run app:builder engine.model=m`)."""
    nested: dict = {}
    for key, value in values.items():
        for section in reversed(key.split(".")):
            value = {section: value}
        nested = merge(nested, value)
    return nested


def merge(base: dict, over: dict) -> dict:
    """`over` laid over `base`, section by section."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def describe_error(exc: ValidationError, config_cls: type[BaseModel]) -> str:
    """A validation error as one line: the required settings that are missing (by option), then each
    other problem naming the setting by its path and option."""
    options = flags(config_cls)
    missing, problems = [], []
    for error in exc.errors(include_url=False):
        loc = tuple(str(part) for part in error["loc"])
        if error["type"] == "missing":
            # A missing section stands for its required fields.
            inside = [path for path in options if path[:len(loc)] == loc and _required(config_cls, path)]
            missing += [options[path] for path in inside or [loc] if path in options] or [".".join(loc)]
            continue
        flag = next((options[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in options), None)
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{'.'.join(loc)}{f' ({flag})' if flag else ''}: {message}")
    if missing:
        problems.insert(0, f"missing required settings: {', '.join(missing)}")
    return "; ".join(problems)


def _required(config_cls: type[BaseModel], path: tuple[str, ...]) -> bool:
    fields = config_cls.model_fields
    for name in path[:-1]:
        fields = _section(fields[name].annotation).model_fields
    return fields[path[-1]].is_required()


# -- reference -----------------------------------------------------------------------------------------


def reference(configs: dict[str, type[BaseModel]]) -> str:
    """Markdown tables of every setting of `configs` ({"batch": JobSpec, "endpoint": ServingConfig}),
    one table per section, each setting once, with its option and default in each configuration."""
    sections: dict[str, dict] = {}  # section -> {"description", "fields": {name: {config: (field, flag)}}}
    for config_name, config_cls in configs.items():
        options = flags(config_cls)
        for group, description, path, name, field in _fields(config_cls):
            key = path[0] if len(path) > 1 else ""
            section = sections.setdefault(key, {"description": description or "", "fields": {}})
            section["fields"].setdefault(name, {})[config_name] = (field, options[path])
    lines = []
    for key, section in sections.items():
        title = f"`{key}`: {section['description']}" if key else "top level"
        lines += [f"### {title}", "", "| setting | option | " + " | ".join(f"{c} default" for c in configs)
                  + " | meaning |", "|---|---|" + "---|" * len(configs) + "---|"]
        for name, where in section["fields"].items():
            field, flag = next(iter(where.values()))
            defaults = []
            for config_name in configs:
                if config_name not in where:
                    defaults.append("-")
                    continue
                f = where[config_name][0]
                defaults.append("required" if f.is_required() else f"`{_shown(f.get_default(call_default_factory=True))}`")
            setting = f"{key}.{name}" if key else name
            meaning = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{setting}` | `{flag}` | " + " | ".join(defaults) + f" | {meaning} |")
        lines.append("")
    return "\n".join(lines)


def _shown(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "unset"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)
