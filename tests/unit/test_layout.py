"""The layout is the architecture: one `tollway` namespace, a public plugin seam, providers
that import nothing of the service but that seam, and every package listed for install."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import tollway.plugin
from tests import support

# The seam a third-party provider is written against. Changing it changes what plugins may
# rely on: update this list on purpose, never by accident.
PLUGIN_SEAM = [
    "hookimpl",
    "ProviderKind",
    "ProviderSettings",
    "Adapter",
    "StreamDecoder",
    "AnyRequest",
    "Capabilities",
    "TEXT",
    "IMAGE",
    "AUDIO",
    "VIDEO",
    "DOCUMENT",
    "ReportedUsage",
    "normalize",
    "stream_usage",
    "GatewayError",
    "invalid_argument",
    "bad_upstream_body",
    "upstream_http_error",
    "grpc_code_for_http_status",
    "scrub",
    "json_object",
    "ServerSentEvent",
    "choice_finishes",
    "finish_with_tools",
    "tool_call",
    "mint_tool_call_id",
    "is_minted",
    "parsed_arguments",
    "arguments_text",
    "arguments_object",
    "json_object_or_none",
    "struct_to_dict",
    "result_text",
    "calls_in",
    "ToolCallAssembler",
    "ReasoningAssembler",
]


def test_the_plugin_seam_exports_exactly_the_agreed_names():
    assert tollway.plugin.__all__ == PLUGIN_SEAM
    for name in PLUGIN_SEAM:
        assert getattr(tollway.plugin, name) is not None


def imported_modules(path: Path) -> list[str]:
    """Absolute module names a file imports (relative imports stay inside its own package)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_built_in_providers_import_only_the_plugin_seam_and_the_contract():
    offending = {
        f"{path.name}: {name}"
        for path in sorted((support.ROOT / "providers").rglob("*.py"))
        for name in imported_modules(path)
        if name.split(".")[0] in ("tollway", "service", "providers")
        and name not in ("tollway.plugin", "tollway.v1", "tollway.v1.completion_pb2")
        and not name.startswith("tollway.providers.")
    }
    assert offending == set()


def test_the_service_never_names_a_provider_module():
    offending = {
        f"{path.relative_to(support.ROOT)}: {name}"
        for path in sorted((support.ROOT / "service").rglob("*.py"))
        for name in imported_modules(path)
        if name.startswith("tollway.providers")
    }
    assert offending == set()


def test_every_package_folder_is_installed_under_tollway():
    setuptools = tomllib.loads((support.ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"tollway": support.ROOT / "protos" / "tollway", "tollway.service": support.ROOT / "service",
               "tollway.providers": support.ROOT / "providers"}
    assert {name: str(support.ROOT / path) for name, path in setuptools["package-dir"].items()} == {
        name: str(path) for name, path in folders.items()}
    found = {
        ".".join([root, *init.parent.relative_to(folder).parts])
        for root, folder in folders.items()
        for init in folder.rglob("__init__.py")
    }
    assert sorted(setuptools["packages"]) == sorted(found)


def test_service_sub_packages_name_the_layers():
    layers = sorted(p.name for p in (support.ROOT / "service").iterdir() if (p / "__init__.py").exists())
    assert layers == ["admission", "billing", "cli", "config", "gateway", "ledger", "media", "plugins", "quota",
                      "routing", "telemetry", "upstream", "usage"]
