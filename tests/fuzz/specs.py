"""Microsoft's Key Vault data-plane OpenAPI (Swagger 2.0, autorest-flavoured) specs, made loadable by schemathesis.

The JSON files under `specs/` are unmodified copies of Microsoft's published specs (azure-rest-api-specs,
`specification/keyvault/data-plane`, MIT licence) for api-versions 7.4 and 2026-04-01. `load_spec` turns one into a
self-contained Swagger 2.0 document:

- references to other files (`common.json#/...`, `keys.json#/...`) are copied in under a prefixed local name, so
  the document has only local `#/...` references;
- `x-ms-parameterized-host` (`{vaultBaseUrl}`) is dropped: the fuzz run sends every request to the dev vault's URL;
- the `api-version` query parameter is pinned to the spec's own version (`info.version`);
- `securityDefinitions`/`security` are dropped: the harness sends a real bearer token on every request;
- `x-ms-examples` (references to example files) are dropped;
- `nextLink` of list results is made nullable (`x-nullable`): Key Vault answers `"nextLink": null` on the last
  page (azure-sdk-contract.md C20, and the SDKs' paging expects it), which the specs' schemas do not say;
- 7.4's rotation-policy action type enum (`rotate`, `notify`) also admits `Rotate` and `Notify`: Key Vault answers
  those (azure-key-vault.md, rotation policy: "compare case-insensitively"), and the 2026-04-01 spec says so;
- `x-ms-paths` (none in these specs) would be merged into `paths`, dropping their `?query` discriminators.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

SPEC_DIR = Path(__file__).parent / "specs"
VERSIONS = ("7.4", "2026-04-01")
FAMILIES = ("secrets", "keys", "certificates")


def _read(version: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SPEC_DIR / version / name).read_text())
    return data


class _Inliner:
    """Rewrites `other.json#/section/Name` references to `#/section/other__Name`, copying the targets in (and,
    recursively, whatever they reference in their own file)."""

    def __init__(self, version: str, root_name: str, root: dict[str, Any]) -> None:
        self.version = version
        self.root_name = root_name
        self.root = root
        self.files: dict[str, dict[str, Any]] = {root_name: root}
        self.copied: set[tuple[str, str, str]] = set()

    def _file(self, name: str) -> dict[str, Any]:
        if name not in self.files:
            self.files[name] = _read(self.version, name)
        return self.files[name]

    def _local_name(self, file_name: str, name: str) -> str:
        return name if file_name == self.root_name else f"{Path(file_name).stem}__{name}"

    def rewrite(self, node: Any, context: str) -> Any:
        """`node` comes from file `context`; every reference in it is made local to the root document."""
        if isinstance(node, list):
            return [self.rewrite(item, context) for item in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in list(node.items()):
            if key == "x-ms-examples":  # references to example files: documentation only
                continue
            if key == "$ref" and isinstance(value, str):
                out[key] = self._ref(value, context)
            else:
                out[key] = self.rewrite(value, context)
        return out

    def _ref(self, ref: str, context: str) -> str:
        file_part, _, pointer = ref.partition("#")
        file_name = file_part or context
        parts = pointer.strip("/").split("/")
        if len(parts) != 2:
            raise ValueError(f"unsupported reference {ref!r}")
        section, name = parts
        local = self._local_name(file_name, name)
        if file_name != self.root_name and (file_name, section, name) not in self.copied:
            self.copied.add((file_name, section, name))
            target = copy.deepcopy(self._file(file_name)[section][name])
            self.root.setdefault(section, {})[local] = self.rewrite(target, file_name)
        return f"#/{section}/{local}"


def _pin_api_version(node: Any, version: str) -> None:
    if isinstance(node, dict):
        if node.get("in") == "query" and node.get("name") == "api-version":
            node["enum"] = [version]
            node.pop("minLength", None)
        for value in node.values():
            _pin_api_version(value, version)
    elif isinstance(node, list):
        for item in node:
            _pin_api_version(item, version)


def _nullable_next_links(definitions: dict[str, Any]) -> None:
    for definition in definitions.values():
        next_link = definition.get("properties", {}).get("nextLink")
        if isinstance(next_link, dict):
            next_link["x-nullable"] = True


def _capitalised_rotation_actions(definitions: dict[str, Any]) -> None:
    action_type = definitions.get("LifetimeActionsType", {}).get("properties", {}).get("type")
    if isinstance(action_type, dict) and "enum" in action_type:
        action_type["enum"] = [*action_type["enum"], "Rotate", "Notify"]


def load_spec(version: str, family: str) -> dict[str, Any]:
    """The `family` spec (secrets, keys, certificates) of api-version `version`, ready for schemathesis."""
    name = f"{family}.json"
    raw = _read(version, name)
    raw.pop("x-ms-parameterized-host", None)
    raw.pop("securityDefinitions", None)
    raw.pop("security", None)
    for path, item in raw.pop("x-ms-paths", {}).items():
        raw.setdefault("paths", {})[path.split("?", 1)[0]] = item
    raw["schemes"] = ["https"]
    inliner = _Inliner(version, name, raw)
    for section in ("paths", "definitions", "parameters", "responses"):
        entries = raw.get(section, {})
        for key in list(entries):  # in place: copied-in entries land in these dicts, already rewritten
            entries[key] = inliner.rewrite(entries[key], name)
    _pin_api_version(raw, version)
    _nullable_next_links(raw.get("definitions", {}))
    _capitalised_rotation_actions(raw.get("definitions", {}))
    return raw
