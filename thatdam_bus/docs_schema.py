"""Reading an AsyncAPI document for the HTML page: ``$ref`` resolution and JSON Schemas as nested tables.

Kept apart from the page layout (``docs_html``) because it is the part with rules: JSON pointers are
URL-encoded (``Envelope%5BNodeHeartbeat%5D``), references can chain (channel message -> component message ->
schema), and schemas can refer to themselves, so expansion carries the stack of schemas it is inside.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from html import escape
from typing import Any
from urllib.parse import unquote

CONSTRAINTS = ("format", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
               "pattern", "minItems", "maxItems", "const", "default")
SCHEMA_PREFIX = "#/components/schemas/"
MAX_REF_CHAIN = 32


def anchor(kind: str, key: str) -> str:
    """A unique, URL-safe element id: letters, digits, ``-`` and ``.`` kept, anything else as ``_<hex>``."""
    return f"{kind}-" + "".join(c if c.isascii() and (c.isalnum() or c in "-.") else f"_{ord(c):02x}" for c in key)


def inline_markdown(text: str) -> str:
    """The CommonMark that the descriptions use: paragraphs and `code`; everything else stays literal text."""
    html = re.sub(r"``(.+?)``|`([^`]+)`", lambda m: f"<code>{m.group(1) or m.group(2)}</code>", escape(text))
    return html.replace("\n\n", "</p><p>").replace("\n", "<br>")


class Resolver:
    """Local ``$ref`` resolution within one document (the generated document has no remote references)."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document

    def resolve(self, reference: str) -> Any:
        if not reference.startswith("#/"):
            raise ValueError(f"only local references are supported, not {reference!r}")
        node: Any = self.document
        for token in reference[2:].split("/"):
            node = node[unquote(token).replace("~1", "/").replace("~0", "~")]
        return node

    def follow(self, node: Any) -> Any:
        """The object behind a chain of ``$ref`` (or ``node`` itself); an unresolvable one is an empty object."""
        for _ in range(MAX_REF_CHAIN):
            if not (isinstance(node, Mapping) and isinstance(node.get("$ref"), str)):
                return node
            try:
                node = self.resolve(node["$ref"])
            except (KeyError, IndexError, TypeError, ValueError):
                return {}
        return {}

    @staticmethod
    def name_of(node: Any) -> str | None:
        """``Envelope[NodeHeartbeat]`` for ``{"$ref": "#/components/schemas/Envelope%5BNodeHeartbeat%5D"}``."""
        reference = node.get("$ref") if isinstance(node, Mapping) else None
        if isinstance(reference, str) and reference.startswith(SCHEMA_PREFIX):
            return unquote(reference[len(SCHEMA_PREFIX):])
        return None


class SchemaRenderer:
    """A JSON Schema as a table of properties. With ``expand``, object-valued properties nest their own table
    (the payload inside its envelope), each schema at most once per path; otherwise they link to it."""

    def __init__(self, resolver: Resolver, *, expand: bool) -> None:
        self.resolver = resolver
        self.expand = expand

    def table(self, schema: Any, stack: tuple[str, ...] = ()) -> str:
        """Properties as rows; a schema without properties (an enum, a scalar) as one summary line. Nested
        tables (``stack`` not empty) skip the description: their parent row already shows it."""
        schema = self.resolver.follow(schema)
        if not isinstance(schema, Mapping):
            return ""
        summary = f"<p>{self._summary(schema)}</p>"
        properties = schema.get("properties")
        if not isinstance(properties, Mapping) or not properties:
            return summary
        required = set(schema.get("required", []))
        rows = "".join(self._row(name, prop, name in required, stack) for name, prop in properties.items())
        extra = "" if schema.get("additionalProperties") is not False else \
            "<div class=muted>no other fields allowed</div>"
        return (f"{summary if schema.get('description') and not stack else ''}<table><tr><th>field</th><th>type</th>"
                f"<th>required</th><th>details</th></tr>{rows}</table>{extra}")

    def _row(self, name: str, prop: Any, required: bool, stack: tuple[str, ...]) -> str:
        resolved = self.resolver.follow(prop) if isinstance(prop, Mapping) else {}
        details = self._details(resolved)
        nested = self._nested(prop, stack)
        return (f"<tr><td><code>{escape(name)}</code></td><td>{self.type_of(prop)}</td>"
                f"<td>{'yes' if required else ''}</td><td>{details}{nested}</td></tr>")

    def _nested(self, prop: Any, stack: tuple[str, ...]) -> str:
        """The object schema a property refers to, as a nested table (only when expanding, never recursively)."""
        if not self.expand or not isinstance(prop, Mapping):
            return ""
        for candidate in [prop, *prop.get("anyOf", []), *prop.get("oneOf", []), prop.get("items")]:
            name = Resolver.name_of(candidate)
            target = self.resolver.follow(candidate) if name else None
            if name and name not in stack and isinstance(target, Mapping) and target.get("properties"):
                return self.table(target, (*stack, name))
        return ""

    def _details(self, schema: Mapping[str, Any]) -> str:
        parts = [inline_markdown(str(schema["description"]))] if schema.get("description") else []
        constraints = [f"{key} <code>{escape(_json(schema[key]))}</code>" for key in CONSTRAINTS if key in schema]
        if constraints:
            parts.append("<span class=muted>" + ", ".join(constraints) + "</span>")
        return "<br>".join(parts)

    def _summary(self, schema: Mapping[str, Any]) -> str:
        text = self.type_of(schema)
        if schema.get("description"):
            text += f" &middot; {inline_markdown(str(schema['description']))}"
        details = self._details({k: v for k, v in schema.items() if k != "description"})
        return f"{text}{' &middot; ' + details if details else ''}"

    def type_of(self, schema: Any) -> str:
        """A short type expression: ``string``, ``integer | null``, ``array of Role``, ``enum: a, b``."""
        if not isinstance(schema, Mapping):
            return ""
        name = Resolver.name_of(schema)
        if name is not None:
            return f'<a href="#{anchor("schema", name)}"><code>{escape(name)}</code></a>'
        for combinator in ("anyOf", "oneOf", "allOf"):
            if isinstance(schema.get(combinator), list):
                joiner = " &amp; " if combinator == "allOf" else " | "
                return joiner.join(self.type_of(option) for option in schema[combinator])
        if "enum" in schema:
            return "enum: " + ", ".join(f"<code>{escape(_json(v))}</code>" for v in schema["enum"])
        kind = schema.get("type", "any")
        kind = " | ".join(kind) if isinstance(kind, list) else str(kind)
        if kind == "array" and isinstance(schema.get("items"), Mapping):
            return f"array of {self.type_of(schema['items'])}"
        if kind == "object" and isinstance(schema.get("additionalProperties"), Mapping):
            return f"object of {self.type_of(schema['additionalProperties'])}"
        return escape(kind)


def _json(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "true" if value is True else "false" if value is False else "null" if value is None else str(value)
