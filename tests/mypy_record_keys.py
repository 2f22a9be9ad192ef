"""A mypy plugin: ``record.get("key")`` on a TypedDict of the record schema must name a declared key.

mypy reports a misspelt key in ``record["key"]`` but lets ``.get`` of an unknown key pass (it returns
``object``), and the readers of records use ``.get`` for every field older records may lack. This plugin
turns that into an error, then leaves the return type to mypy's own rule. Enabled in pyproject's [tool.mypy].
"""

from __future__ import annotations

from collections.abc import Callable

from mypy.plugin import MethodContext, Plugin
from mypy.plugins.default import typed_dict_get_callback
from mypy.typeops import try_getting_str_literals
from mypy.types import Type, TypedDictType, get_proper_type

SCHEMA_MODULE = "anobench.records."


def _checked_get(ctx: MethodContext) -> Type:
    typed_dict = get_proper_type(ctx.type)
    if (isinstance(typed_dict, TypedDictType) and ctx.args and len(ctx.args[0]) == 1
            and typed_dict.fallback.type.fullname.startswith(SCHEMA_MODULE)):
        keys = try_getting_str_literals(ctx.args[0][0], ctx.arg_types[0][0]) or []
        name = typed_dict.fallback.type.name
        for key in keys:
            if key not in typed_dict.items:
                ctx.api.fail(f'TypedDict "{name}" has no key "{key}" (declare it in anobench.records)', ctx.context)
    return typed_dict_get_callback(ctx)


class RecordKeysPlugin(Plugin):
    def get_method_hook(self, fullname: str) -> Callable[[MethodContext], Type] | None:
        return _checked_get if fullname == "typing.Mapping.get" else None


def plugin(version: str) -> type[Plugin]:
    return RecordKeysPlugin
