"""The `tollway` command: `serve` runs the gateway, `complete` sends one request to a running one."""

from __future__ import annotations

import argparse
import asyncio
import mimetypes
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tollway.service.config.loader import DEFAULT_LISTEN, Config, ConfigError, load_config, parse_listen

if TYPE_CHECKING:
    from datetime import datetime

    import grpc

    from tollway.v1 import completion_pb2 as pb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tollway", description="A gRPC gateway for LLM completions.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--listen", help=f"HOST:PORT (env TOLLWAY_LISTEN, default {DEFAULT_LISTEN})")
    serve.add_argument("--config", help="TOML config file (env TOLLWAY_CONFIG; default: embedded)")
    serve.add_argument("--workers", metavar="N|auto",
                       help="serving processes on the listen address (default: server.workers, 1)")

    complete = commands.add_parser("complete", help="send one request to a running gateway")
    complete.add_argument("--target", default=os.environ.get("TOLLWAY_TARGET", DEFAULT_LISTEN),
                          help="gateway address (env TOLLWAY_TARGET)")
    complete.add_argument("--model", required=True, help='"provider/model" or a route name')
    complete.add_argument("--text", required=True)
    complete.add_argument("--system", help="a system prompt")
    for kind in ("image", "audio", "video", "document"):
        complete.add_argument(f"--{kind}", action="append", default=[], metavar="URL|PATH")
    complete.add_argument("--max-tokens", type=int)
    complete.add_argument("--temperature", type=float)
    complete.add_argument("--stream", action="store_true")
    complete.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    complete.add_argument("--key-env", default="TOLLWAY_KEY",
                          help="environment variable holding this caller's key (default TOLLWAY_KEY)")
    _add_tls_flags(complete)

    usage = commands.add_parser("usage", help="sum the usage ledger of a running gateway")
    usage.add_argument("--target", default=os.environ.get("TOLLWAY_TARGET", DEFAULT_LISTEN),
                       help="gateway address (env TOLLWAY_TARGET)")
    usage.add_argument("--since", help="start, inclusive: an ISO date/time (UTC if no zone) or 24h, 7d")
    usage.add_argument("--until", help="end, exclusive: an ISO date/time (UTC if no zone)")
    for name in ("caller", "provider", "model", "route"):
        usage.add_argument(f"--{name}", help=f"only this {name}")
    usage.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="only records with it")
    usage.add_argument("--group-by", default="", metavar="DIMS",
                       help="comma-separated: caller, provider, model, route, day, label:KEY")
    usage.add_argument("--format", default="table", choices=("table", "csv", "jsonl"))
    usage.add_argument("--key-env", default="TOLLWAY_KEY", help="environment variable holding the caller key")
    usage.add_argument("--timeout", type=float, default=30.0)
    _add_tls_flags(usage)

    limits = commands.add_parser("limits", help="rate limits and budgets of a running gateway: used and remaining")
    limits.add_argument("--target", default=os.environ.get("TOLLWAY_TARGET", DEFAULT_LISTEN),
                        help="gateway address (env TOLLWAY_TARGET)")
    limits.add_argument("--caller", help="admin only: another caller's limits (default: your own; an admin's: all)")
    limits.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help="for calls carrying this label")
    limits.add_argument("--model", help="for calls naming this model (default: any)")
    limits.add_argument("--format", default="table", choices=("table", "json"))
    limits.add_argument("--key-env", default="TOLLWAY_KEY", help="environment variable holding the caller key")
    limits.add_argument("--timeout", type=float, default=30.0)
    _add_tls_flags(limits)

    keys = commands.add_parser("keys", help="manage caller keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    new_key = key_commands.add_parser("new", help="print a fresh caller key once, and its config lines")
    new_key.add_argument("name", help="the caller's name")

    args = parser.parse_args(argv)
    if args.command in ("complete", "usage", "limits"):
        try:
            args.channel_credentials = _channel_credentials(args)
        except ValueError as exc:
            print(f"tollway: {exc}", file=sys.stderr)
            return 2
    if args.command == "serve":
        return _serve(args)
    if args.command == "keys":
        return _keys_new(args.name)
    if args.command == "usage":
        return _usage(args)
    if args.command == "limits":
        return _limits(args)
    return _complete(args)


def _usage(args: argparse.Namespace) -> int:
    from tollway.service.ledger import UsageFilter
    from tollway.service.ledger.summary import to_proto

    from .render import render, row_dict

    try:
        filters = UsageFilter(
            start=_moment(args.since, "--since") if args.since else None,
            end=_moment(args.until, "--until") if args.until else None,
            caller=args.caller, provider=args.provider, model=args.model, route=args.route,
            labels=dict(_pair(label) for label in args.label),
        )
        group_by = [g.strip() for g in args.group_by.split(",") if g.strip()]
        request = to_proto(filters, group_by)
    except ValueError as exc:
        print(f"tollway: {exc}", file=sys.stderr)
        return 2
    response = _ask(args, "GetUsageSummary", request)
    if response is None:
        return 1
    # Columns, and the rows' order, as the command line named the groupings: the request can
    # only carry label keys after the other dimensions.
    rows = sorted(response.rows, key=lambda row: [(v is not None, v or "")
                                                  for v in list(row_dict(row, group_by).values())[:len(group_by)]])
    sys.stdout.write(render(rows, group_by, args.format))
    return 0


def _limits(args: argparse.Namespace) -> int:
    from tollway.v1 import completion_pb2 as pb

    from .limits_render import render_limits

    try:
        labels = dict(_pair(label) for label in args.label)
    except ValueError as exc:
        print(f"tollway: {exc}", file=sys.stderr)
        return 2
    response = _ask(args, "GetLimits",
                    pb.GetLimitsRequest(caller=args.caller or "", labels=labels, model=args.model or ""))
    if response is None:
        return 1
    sys.stdout.write(render_limits(response, args.format))
    return 0


def _ask(args: argparse.Namespace, method: str, request: Any) -> Any:
    """One unary call to the running gateway with the caller's key (args.key_env); None, with the
    status printed, when it failed."""
    import grpc

    from tollway.v1 import completion_pb2_grpc as pb_grpc

    key = os.environ.get(args.key_env)
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    with _channel(args) as channel:
        try:
            # completion_pb2_grpc is generated without annotations.
            stub = pb_grpc.CompletionStub(channel)  # type: ignore[no-untyped-call]
            return getattr(stub, method)(request, timeout=args.timeout, metadata=metadata)
        except grpc.RpcError as err:
            print(f"tollway: {err.code().name}: {err.details()}", file=sys.stderr)
            return None


def _add_tls_flags(command: argparse.ArgumentParser) -> None:
    env = os.environ.get
    command.add_argument("--tls-ca", default=env("TOLLWAY_TLS_CA"), metavar="FILE",
                         help="connect over TLS, trusting this CA's PEM certificates (env TOLLWAY_TLS_CA); "
                              "the target's host name must be in the gateway's certificate")
    command.add_argument("--tls-cert", default=env("TOLLWAY_TLS_CERT"), metavar="FILE",
                         help="client certificate for mutual TLS, PEM (env TOLLWAY_TLS_CERT); needs --tls-key")
    command.add_argument("--tls-key", default=env("TOLLWAY_TLS_KEY"), metavar="FILE",
                         help="the client certificate's private key, PEM (env TOLLWAY_TLS_KEY)")
    command.add_argument("--tls-server-name", default=env("TOLLWAY_TLS_SERVER_NAME"), metavar="NAME",
                         help="check the gateway's certificate for NAME instead of the target's host "
                              "(e.g. through a port-forward; env TOLLWAY_TLS_SERVER_NAME)")


def _channel_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials from the --tls-* flags; None (plaintext) when none is given."""
    import grpc

    if not (args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name):
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together (a client certificate and its key)")
    files = {}
    for flag, path in (("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path:
            try:
                files[flag] = Path(path).read_bytes()
            except OSError as exc:
                raise ValueError(f"{flag} {path}: {(exc.strerror or str(exc)).lower()}") from None
    # Without --tls-ca, the CAs gRPC trusts by default (its bundled roots, or GRPC_DEFAULT_SSL_ROOTS_FILE_PATH).
    return grpc.ssl_channel_credentials(files.get("--tls-ca"), files.get("--tls-key"), files.get("--tls-cert"))


def _channel(args: argparse.Namespace) -> grpc.Channel:
    import grpc

    if args.channel_credentials is None:
        return grpc.insecure_channel(args.target)
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    return grpc.secure_channel(args.target, args.channel_credentials, options=options)


def _moment(text: str, flag: str) -> datetime:
    """An ISO date/time (UTC when it names no zone), or a span back from now: 24h, 7d, 30m."""
    from datetime import datetime, timedelta, timezone

    units = {"m": "minutes", "h": "hours", "d": "days"}
    if text[:-1].isdigit() and text[-1:] in units:
        return datetime.now(timezone.utc) - timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{flag} {text!r} is neither an ISO date/time nor a span like 7d") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--label {text!r} is not KEY=VALUE")
    return key, value


def _keys_new(name: str) -> int:
    from tollway.service.admission.auth import new_key

    try:
        key, config_lines = new_key(name)
    except ValueError as exc:
        print(f"tollway: {exc}", file=sys.stderr)
        return 2
    print(f"key (shown once; give it to the caller, keep it nowhere else):\n  {key}\n")
    print("config (add to the gateway's TOML file; only the hash is stored):")
    print(config_lines, end="")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from tollway.service.gateway import worker
    from tollway.service.gateway.logs import configure_logging
    from tollway.service.gateway.server import serve_forever
    from tollway.service.ledger import JournalError, SchemaTooNew
    from tollway.service.plugins.loader import PluginError

    config_path = args.config or os.environ.get("TOLLWAY_CONFIG")
    try:
        slot = worker.WorkerSlot.from_environ()
        if slot is not None:
            # A worker of a supervisor: it stops with it, and tells it when it serves.
            worker.stop_with_supervisor()
        config = load_config(config_path)
        if args.listen is not None:
            from dataclasses import replace

            config = replace(config, server=replace(config.server, listen=parse_listen(args.listen, "--listen")))
        workers = worker.resolve_workers(config.server.workers if args.workers is None else worker.parse_workers(
            int(args.workers) if args.workers.isascii() and args.workers.isdigit() else args.workers, "--workers"))
    except (ConfigError, ValueError) as exc:
        print(f"tollway: {exc}", file=sys.stderr)
        return 2
    if slot is None and workers > 1:
        _become_supervisor(config, config_path, workers)
    configure_logging(config.server.log_format)
    try:
        import uvloop

        runner: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    except ImportError:  # uvloop is optional off Linux/macOS
        runner = asyncio.run
    try:
        runner(serve_forever(config, config_path, on_serving=worker.notify_ready if slot is not None else None))
    except (ConfigError, PluginError, OSError, JournalError, SchemaTooNew) as exc:
        print(f"tollway: {exc}", file=sys.stderr)
        return 1
    return 0


def _become_supervisor(config: Config, config_path: str | None, workers: int) -> None:
    """Replace this process (exec: same pid, so signals and the exit code are the supervisor's)
    with the supervisor of `workers` serving processes. The config was checked here; the
    supervisor is a fresh interpreter that never loads gRPC (it starts processes)."""
    command = [sys.executable, "-m", "tollway.service.gateway.supervisor", "--workers", str(workers),
               "--listen", config.server.listen, "--grace-period-s", repr(config.server.grace_period_s),
               "--close-timeout-s", repr(config.ledger.close_timeout_s), "--log-format", config.server.log_format]
    if config_path:
        command += ["--config", config_path]
    if config.server.metrics_listen:
        command += ["--metrics-listen", config.server.metrics_listen]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def _complete(args: argparse.Namespace) -> int:
    import grpc

    from tollway.v1 import completion_pb2 as pb
    from tollway.v1 import completion_pb2_grpc as pb_grpc

    messages = []
    if args.system:
        messages.append(pb.Message(role=pb.ROLE_SYSTEM, parts=[pb.Part(text=args.system)]))
    parts = [pb.Part(text=args.text)]
    for kind in ("image", "audio", "video", "document"):
        for ref in getattr(args, kind):
            try:
                media: dict[str, Any] = {kind: _media(kind, ref)}  # one of Part's Media fields
                parts.append(pb.Part(**media))
            except OSError as exc:
                print(f"tollway: --{kind} {ref}: {exc.strerror or exc}", file=sys.stderr)
                return 2
            except ValueError as exc:
                print(f"tollway: --{kind} {ref}: {exc}", file=sys.stderr)
                return 2
    messages.append(pb.Message(role=pb.ROLE_USER, parts=parts))
    fields = dict(model=args.model, messages=messages)
    if args.max_tokens is not None:
        fields["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        fields["temperature"] = args.temperature

    key = os.environ.get(args.key_env)
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    with _channel(args) as channel:
        stub = pb_grpc.CompletionStub(channel)  # type: ignore[no-untyped-call]  # generated without annotations
        try:
            if args.stream:
                usage = cost = None
                for message in stub.StreamComplete(pb.StreamCompleteRequest(**fields), timeout=args.timeout,
                                                   metadata=metadata):
                    if message.HasField("delta"):
                        sys.stdout.write(message.delta.text)
                        sys.stdout.flush()
                    else:
                        usage, cost = message.summary.usage, message.summary.cost
                        sys.stdout.write("\n")
                _print_usage(usage, cost)
            else:
                response = stub.Complete(pb.CompleteRequest(**fields), timeout=args.timeout, metadata=metadata)
                for choice in response.choices:
                    print("".join(p.text for p in choice.message.parts))
                print(f"\n[{response.provider} {response.model}]", file=sys.stderr)
                _print_usage(response.usage, response.cost)
        except grpc.RpcError as err:
            print(f"tollway: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    return 0


def _media(kind: str, ref: str) -> pb.Media:
    from tollway.v1 import completion_pb2 as pb

    if ref.startswith(("http://", "https://", "data:")):
        return pb.Media(url=ref)
    path = Path(ref)
    data = path.read_bytes()
    return pb.Media(data=data, mime_type=local_media_type(kind, path, data))


def local_media_type(kind: str, path: Path, data: bytes) -> str:
    """The media type of a local file, from its bytes: a PNG named .jpg is a PNG.

    The name decides only for plain text documents, which carry no signature to sniff.
    ValueError when the content is not of the flag's kind."""
    import filetype

    from tollway.service.media.policy import fits_kind, normalize_mime
    from tollway.service.plugins.adapter import AUDIO, DOCUMENT, IMAGE, VIDEO

    modality = {"image": IMAGE, "audio": AUDIO, "video": VIDEO, "document": DOCUMENT}[kind]
    sniffed = filetype.guess_mime(data[:8192])
    if sniffed:
        mime = normalize_mime(sniffed)
        if not fits_kind(modality, mime):
            raise ValueError(f"the file holds {mime}, not {_NOUN[kind]}")
        return mime
    named = normalize_mime(mimetypes.guess_type(path.name)[0] or "text/plain")
    if modality == DOCUMENT and named.startswith("text/"):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("the file is neither a known document type nor UTF-8 text") from None
        return named
    raise ValueError(f"the file's content is not {_NOUN[kind]} of a type tollway recognizes")


_NOUN = {"image": "an image", "audio": "audio", "video": "a video", "document": "a document"}


def _print_usage(usage: pb.Usage | None, cost: pb.Cost | None) -> None:
    if usage is None:
        return
    from google.protobuf import json_format

    if cost is not None:
        print(describe_cost(cost), file=sys.stderr)
    print(json_format.MessageToJson(usage, indent=2), file=sys.stderr)


def describe_cost(cost: pb.Cost) -> str:
    """`cost: $0.00012345 (openai/gpt-4.1@2025-04-14)`, or `cost: unpriced: <reason>`; exact
    dollars from the integer nano-USD, as `tollway usage` prints them."""
    from tollway.service.billing.money import format_usd

    if cost.unpriced:
        line = f"cost: unpriced: {cost.unpriced_reason or 'no price for this model'}"
    else:
        line = f"cost: ${format_usd(cost.total_nano_usd)}"
        if cost.price_entry:
            line += f" ({cost.price_entry})"
    if cost.HasField("provider_reported_nano_usd"):
        line += f"; the provider reported ${format_usd(cost.provider_reported_nano_usd)}"
    return line

