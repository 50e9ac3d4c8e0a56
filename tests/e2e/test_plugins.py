"""The plugin registry: an out-of-tree provider found by entry point and served over gRPC
with no edit to service/, allow/deny lists, and the mistakes the host refuses at start-up.

tests/plugins/echo_provider is a provider package as a third party would publish it. The
`installed_echo` fixture installs it the way pip does, as far as discovery goes: a
*.dist-info directory whose entry_points.txt names the plugin, on sys.path.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import grpc
import pluggy
import pytest
from tollway.service.config.loader import ConfigError, parse_config
from tollway.service.gateway.server import start_gateway
from tollway.service.plugins.adapter import Adapter, ProviderKind, ProviderSettings
from tollway.service.plugins.hookspecs import ENTRY_POINT_GROUP, hookimpl
from tollway.service.plugins.loader import (
    PluginError,
    load_provider_kinds,
    new_plugin_manager,
)
from tollway.v1 import completion_pb2 as pb

from tests.support.upstream import FakeUpstream, Reply
from tests import support

ECHO_PACKAGE = support.TESTS / "plugins" / "echo_provider"
ECHO_KEY = "tw-test-echo-key-0123456789"


def write_dist_info(site: Path, distribution: str, entry_points: dict[str, str]) -> None:
    """The metadata `pip install` writes, as importlib.metadata reads it."""
    dist_info = site / f"{distribution.replace('-', '_')}-1.0.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0.0\n")
    lines = [f"[{ENTRY_POINT_GROUP}]", *(f"{name} = {target}" for name, target in entry_points.items())]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A site-packages directory on sys.path for the duration of one test."""
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    return site


@pytest.fixture
def installed_echo(site: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """tollway-echo installed: its code importable and its declared entry point discoverable."""
    project = tomllib.loads((ECHO_PACKAGE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    entry_points = project["entry-points"][ENTRY_POINT_GROUP]
    assert entry_points == {"echo": "tollway_echo"}
    monkeypatch.syspath_prepend(str(ECHO_PACKAGE))
    write_dist_info(site, project["name"], entry_points)
    return "echo"


def echo_config(upstream: FakeUpstream, **plugins: list[str]) -> dict:
    config: dict = {"providers": {"echo": {"base_url": upstream.base_url, "api_key_env": "ECHO_API_KEY"}}}
    if plugins:
        config["plugins"] = plugins
    return config


def user_text(text: str) -> list[pb.Message]:
    return [pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=text)])]


# -- the out-of-tree provider over gRPC ------------------------------------------------------


def test_entry_point_plugin_is_discovered_beside_the_built_ins(installed_echo):
    kinds = load_provider_kinds(pm=new_plugin_manager())
    assert {"echo", "mixrouter"} <= set(kinds)
    echo = kinds["echo"]
    assert (echo.default_base_url, echo.default_api_key_env, echo.requires_api_key) == (None, "ECHO_API_KEY", False)
    adapter = echo.create(ProviderSettings(name="echo", kind="echo", base_url="http://echo.test", api_key=None))
    assert isinstance(adapter, Adapter)


async def test_out_of_tree_provider_answers_over_grpc(installed_echo, start_client, upstream: FakeUpstream):
    client = await start_client(echo_config(upstream), {"ECHO_API_KEY": ECHO_KEY})
    upstream.reply(Reply(body={"reply": "hello back", "model": "echo-1", "tokens": {"in": 7, "out": 3}}))

    response = await client.stub.Complete(
        pb.CompleteRequest(model="echo/echo-1", messages=user_text("hello"), max_tokens=16), timeout=10
    )

    assert (response.provider, response.model) == ("echo", "echo-1")
    assert [p.text for p in response.choices[0].message.parts] == ["hello back"]
    assert response.choices[0].finish_reason == pb.FINISH_REASON_STOP
    assert (response.usage.input.total, response.usage.input.text) == (7, 7)
    assert (response.usage.output.total, response.usage.output.text, response.usage.total_tokens) == (3, 3, 10)
    assert list(response.usage.warnings) == []
    [received] = upstream.received
    assert (received.method, received.path) == ("POST", "/echo")
    assert received.headers["x-echo-key"] == ECHO_KEY
    assert received.json() == {"model": "echo-1", "prompt": [{"role": "user", "text": "hello"}], "max_tokens": 16,
                               "stream": False}

    models = await client.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert [(p.name, p.kind, list(p.input_modalities)) for p in models.providers] == [
        ("echo", "echo", [pb.MODALITY_TEXT])
    ]


async def test_out_of_tree_provider_streams_over_grpc(installed_echo, start_client, upstream: FakeUpstream):
    client = await start_client(echo_config(upstream), {})
    upstream.reply(Reply(events=['{"delta": "hel"}', '{"delta": "lo"}', '{"done": true, "tokens": {"in": 4, "out": 2}}']))

    messages = [m async for m in client.stub.StreamComplete(
        pb.StreamCompleteRequest(model="echo/echo-1", messages=user_text("hi")), timeout=10
    )]

    assert [m.delta.text for m in messages[:-1]] == ["hel", "lo"]
    summary = messages[-1].summary
    assert (summary.provider, summary.model) == ("echo", "echo-1")
    assert (summary.usage.input.total, summary.usage.output.total, summary.usage.estimated) == (4, 2, False)
    [received] = upstream.received
    assert "x-echo-key" not in received.headers  # no key configured, none sent
    assert received.json()["stream"] is True


async def test_out_of_tree_provider_errors_go_through_the_one_table(
    installed_echo, start_client, upstream: FakeUpstream
):
    client = await start_client(echo_config(upstream), {"ECHO_API_KEY": ECHO_KEY})
    # A status no retry can fix, so exactly one upstream answer decides the outcome.
    upstream.reply(Reply(status=400, body={"problem": f"prompt rejected for key {ECHO_KEY}"}))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(pb.CompleteRequest(model="echo/echo-1", messages=user_text("hi")), timeout=10)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "echo: upstream returned HTTP 400: prompt rejected for key [redacted]"
    assert len(upstream.received) == 1


async def test_host_refuses_media_the_plugin_did_not_declare(installed_echo, start_client, upstream: FakeUpstream):
    client = await start_client(echo_config(upstream), {})
    image = pb.Part(image=pb.Media(url="https://example.com/cat.png"))
    request = pb.CompleteRequest(model="echo/echo-1", messages=[pb.Message(role=pb.ROLE_USER, parts=[image])])

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(request, timeout=10)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == 'messages[0].parts[0].image: provider "echo" does not accept image input'
    assert upstream.received == []


@pytest.mark.parametrize(("fields", "message"), [
    (dict(tools=[pb.Tool(name="get_weather")]), 'tools: provider "echo" does not support tool calling'),
    (dict(response_format=pb.ResponseFormat(json_object=pb.JsonObjectFormat())),
     'response_format: provider "echo" does not support structured output'),
    (dict(reasoning=pb.ReasoningConfig(effort=pb.REASONING_EFFORT_LOW)),
     'reasoning: provider "echo" does not support reasoning settings'),
])
async def test_host_refuses_features_the_plugin_did_not_declare(installed_echo, start_client, upstream: FakeUpstream,
                                                                fields, message):
    client = await start_client(echo_config(upstream), {})
    hello = pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="hi")])

    for call in (client.stub.Complete(pb.CompleteRequest(model="echo/echo-1", messages=[hello], **fields), timeout=10),
                 _drain(client.stub.StreamComplete(pb.StreamCompleteRequest(model="echo/echo-1", messages=[hello],
                                                                            **fields), timeout=10))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == message
    assert upstream.received == []


async def _drain(stream) -> None:
    async for _ in stream:
        pass


# -- allow / deny ------------------------------------------------------------------------------


async def test_allow_and_deny_name_the_plugins_that_load(installed_echo):
    assert set(load_provider_kinds(allow=["echo"], pm=new_plugin_manager())) == {"echo"}
    assert "echo" not in load_provider_kinds(deny=["echo"], pm=new_plugin_manager())
    assert "mixrouter" in load_provider_kinds(deny=["echo"], pm=new_plugin_manager())
    # Deny wins over allow.
    assert set(load_provider_kinds(allow=["echo", "mixrouter"], deny=["echo"], pm=new_plugin_manager())) == {
        "mixrouter"
    }


async def test_config_deny_list_keeps_the_plugin_out_of_the_gateway(installed_echo, upstream: FakeUpstream):
    config = parse_config(echo_config(upstream, deny=["echo"]))
    with pytest.raises(ConfigError) as caught:
        await start_gateway(config, environ={}, listen="127.0.0.1:0")
    message = str(caught.value)
    assert message.startswith("providers.echo: unknown kind 'echo' (installed: ")
    installed = message.partition("(installed: ")[2].rstrip(")").split(", ")
    assert "mixrouter" in installed
    assert "echo" not in installed


async def test_config_allow_list_loads_only_what_it_names(installed_echo, start_client, upstream: FakeUpstream):
    config = echo_config(upstream, allow=["echo"])
    config["providers"]["mixrouter"] = {"base_url": f"{upstream.base_url}/v1"}
    with pytest.raises(ConfigError) as caught:
        await start_gateway(parse_config(config), environ={}, listen="127.0.0.1:0")
    assert str(caught.value) == "providers.mixrouter: unknown kind 'mixrouter' (installed: echo)"

    del config["providers"]["mixrouter"]
    client = await start_client(config, {})
    models = await client.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert [p.name for p in models.providers] == ["echo"]


# -- mistakes refused at start-up ----------------------------------------------------------------


class MisspelledHook:
    @hookimpl
    def tollway_register_provider(self, register):  # the spec is tollway_register_providers
        raise AssertionError("never called")


def kind_plugin(*names: str) -> object:
    """A plugin object registering one echo-like kind per name."""

    class Plugin:
        @hookimpl
        def tollway_register_providers(self, register):
            for name in names:
                register(ProviderKind(name=name, create=lambda s: None, default_base_url=None,
                                      default_api_key_env=None, requires_api_key=False))

    return Plugin()


def test_a_misspelled_hook_is_caught_by_check_pending():
    plugin = MisspelledHook()
    with pytest.raises(PluginError) as caught:
        load_provider_kinds(allow=[], extra_plugins=[plugin], pm=new_plugin_manager())
    assert str(caught.value) == f"invalid plugin: unknown hook 'tollway_register_provider' in plugin {plugin!r}"
    assert isinstance(caught.value.__cause__, pluggy.PluginValidationError)


def test_a_misspelled_hook_in_an_entry_point_plugin_names_the_entry_point(site: Path):
    (site / "tollway_misspelled.py").write_text(
        "from tollway.plugin import hookimpl\n\n"
        "@hookimpl\n"
        "def tollway_register_provider(register):\n"
        "    pass\n"
    )
    write_dist_info(site, "tollway-misspelled", {"misspelled": "tollway_misspelled"})
    with pytest.raises(PluginError) as caught:
        load_provider_kinds(pm=new_plugin_manager())
    assert str(caught.value).startswith(
        "plugin 'misspelled' is invalid: unknown hook 'tollway_register_provider' in plugin <module 'tollway_misspelled'"
    )


def test_a_hook_with_arguments_the_spec_lacks_is_refused():
    class WrongArguments:
        @hookimpl
        def tollway_register_providers(self, register, settings):
            raise AssertionError("never called")

    with pytest.raises(PluginError) as caught:
        load_provider_kinds(allow=[], extra_plugins=[WrongArguments()], pm=new_plugin_manager())
    message = str(caught.value)
    assert message.startswith("invalid plugin: Plugin ")
    assert "hook 'tollway_register_providers'" in message
    assert "Argument(s) {'settings'} are declared in the hookimpl but can not be found in the hookspec" in message


def test_a_kind_registered_twice_is_refused():
    with pytest.raises(PluginError) as caught:
        load_provider_kinds(allow=[], extra_plugins=[kind_plugin("twin"), kind_plugin("twin")],
                            pm=new_plugin_manager())
    assert str(caught.value) == "provider kind 'twin' is registered twice"


def test_a_kind_named_like_a_built_in_is_refused(installed_echo):
    with pytest.raises(PluginError) as caught:
        load_provider_kinds(extra_plugins=[kind_plugin("echo")], pm=new_plugin_manager())
    assert str(caught.value) == "provider kind 'echo' is registered twice"


@pytest.mark.parametrize("name", ["Echo", "echo-provider", "2echo", "", "echo/x"])
def test_an_invalid_kind_name_is_refused(name: str):
    with pytest.raises(PluginError) as caught:
        load_provider_kinds(allow=[], extra_plugins=[kind_plugin(name)], pm=new_plugin_manager())
    assert str(caught.value) == f"provider kind name {name!r} must match ^[a-z][a-z0-9_]*$"


def test_register_takes_only_a_provider_kind():
    class Sloppy:
        @hookimpl
        def tollway_register_providers(self, register):
            register({"name": "sloppy"})

    with pytest.raises(PluginError) as caught:
        load_provider_kinds(allow=[], extra_plugins=[Sloppy()], pm=new_plugin_manager())
    assert str(caught.value) == "register() takes a ProviderKind, got dict"


def test_an_entry_point_that_fails_to_import_names_the_plugin(site: Path):
    write_dist_info(site, "tollway-broken", {"broken": "tollway_no_such_module"})
    with pytest.raises(PluginError) as caught:
        load_provider_kinds(pm=new_plugin_manager())
    assert str(caught.value) == "plugin 'broken' failed to import: No module named 'tollway_no_such_module'"
    # A denied plugin is not even imported.
    assert "mixrouter" in load_provider_kinds(deny=["broken"], pm=new_plugin_manager())


# -- hooks run at start-up only --------------------------------------------------------------------


class CountingPlugin:
    """Registers the echo adapter under its own kind and counts how often the hook runs."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def tollway_register_providers(self, register):
        from tollway_echo import EchoAdapter

        self.calls += 1
        register(ProviderKind(name="counted", create=EchoAdapter, default_base_url=None,
                              default_api_key_env=None, requires_api_key=False))


async def test_hooks_run_at_start_up_only(installed_echo, start_client, upstream: FakeUpstream):
    counting = CountingPlugin()
    config = {"providers": {"counted": {"base_url": upstream.base_url}}}
    client = await start_client(config, {}, extra_plugins=[counting])
    assert counting.calls == 1

    upstream.default = Reply(body={"reply": "again", "model": "echo-1", "tokens": {"in": 1, "out": 1}})
    for _ in range(3):
        response = await client.stub.Complete(
            pb.CompleteRequest(model="counted/echo-1", messages=user_text("hi")), timeout=10
        )
        assert response.provider == "counted"
    upstream.default = Reply(events=['{"delta": "x"}', '{"done": true}'])
    messages = [m async for m in client.stub.StreamComplete(
        pb.StreamCompleteRequest(model="counted/echo-1", messages=user_text("hi")), timeout=10
    )]
    assert messages[0].delta.text == "x"
    await client.stub.ListModels(pb.ListModelsRequest(), timeout=10)

    assert len(upstream.received) == 4
    assert counting.calls == 1
