"""The README's Go, Node and Java examples, built and run against a real `tollway serve`.

Go is built offline from Debian's packages: Go 1.19, grpc-go and google.golang.org/protobuf
sources under /usr/share/gocode, in GOPATH mode (the way Debian builds Go itself; module mode
would want the go.mod of every module grpc-go's go.mod names, and those are not packaged).
Its stubs are generated at test time with protoc, protoc-gen-go and protoc-gen-go-grpc. Java
is compiled against Debian's grpc-java jars, its stubs made by protoc and grpc_java_plugin.
Node runs from tests/interop/node_modules (`npm ci --prefix tests/interop`).

Both programs print the same lines, so one set of assertions reads either:
  answer: TEXT / stream: TEXT / usage: input=N output=N total=N / cost: N nano-USD (ENTRY)
  error: CODE: MESSAGE / request id: ID / retry after: S.SSSs
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import support
from tests.support.answers import answer, chunk, request, stream_request
from tests.support.served import Served
from tests.support.tools import require_path, require_tool
from tests.support.upstream import FakeUpstream, Received, Reply, sse_events
from tollway.v1 import completion_pb2 as pb

ROOT = support.ROOT
PROTOS = ROOT / "protos"
INTEROP = support.TESTS / "interop"
GO_EXAMPLE = INTEROP / "go" / "main.go"
NODE_EXAMPLE = INTEROP / "example.mjs"
JAVA_EXAMPLE = INTEROP / "java" / "TollwayExample.java"
GOCODE = Path("/usr/share/gocode/src")
# Where the proto's go_package puts the stubs, inside a GOPATH's src/.
STUBS_IMPORT_PATH = "tollway.dev/gen/go/tollway/v1"
MODEL = "mixrouter/gemini-2.0-flash"
UPSTREAM_MODEL = "gemini-2.0-flash"
PROMPT = "Say hi"
# A cold Go build of grpc-go takes a while on a busy two-core machine.
BUILD_TIMEOUT_S = 900
RUN_TIMEOUT_S = 60

ANSWER = "Hello from the upstream"
WORDS = ["Hello ", "from ", "the ", "stream"]


async def run(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT,
              timeout: float = RUN_TIMEOUT_S) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"{Path(argv[0]).name} did not finish within {timeout}s: {argv[1:]}")
    return process.returncode if process.returncode is not None else -1, out.decode(), err.decode()


# -- building the clients -----------------------------------------------------------------------


def go_environment(gopath: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO")}
    env.update(GO111MODULE="off", GOPATH=f"{gopath}{os.pathsep}{GOCODE.parent}", GOPROXY="off", GOFLAGS="",
               CGO_ENABLED="0")
    if not env.get("HOME") and not env.get("XDG_CACHE_HOME"):
        env["GOCACHE"] = str(gopath / "cache")
    return env


@pytest.fixture(scope="module")
async def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = require_tool("go", "golang-go")
    protoc = require_tool("protoc", "protobuf-compiler")
    require_tool("protoc-gen-go", "protoc-gen-go")
    require_tool("protoc-gen-go-grpc", "protoc-gen-go-grpc")
    require_path(GOCODE / "google.golang.org" / "grpc" / "server.go", "golang-google-grpc-dev")
    require_path(GOCODE / "google.golang.org" / "genproto" / "googleapis" / "rpc" / "errdetails",
                 "golang-google-genproto-dev")
    # 1.3 cannot marshal the oneofs of code protoc-gen-go writes today; 1.4 added this file.
    require_path(GOCODE / "github.com" / "golang" / "protobuf" / "proto" / "registry.go",
                 "golang-github-golang-protobuf-1-5-dev")

    gopath = tmp_path_factory.mktemp("gopath")
    source = gopath / "src"
    source.mkdir()
    code, out, err = await run([protoc, f"-I{PROTOS}", f"--go_out={source}", f"--go-grpc_out={source}",
                                "tollway/v1/completion.proto"])
    assert (code, err) == (0, ""), out + err
    assert sorted(p.name for p in (source / STUBS_IMPORT_PATH).iterdir()) == [
        "completion.pb.go", "completion_grpc.pb.go"]
    program = source / "tollway.dev" / "examples" / "go"
    program.mkdir(parents=True)
    shutil.copy(GO_EXAMPLE, program / "main.go")
    binary = gopath / "tollway-example"
    code, out, err = await run([go, "build", "-o", str(binary), "tollway.dev/examples/go"],
                               env=go_environment(gopath), cwd=gopath, timeout=BUILD_TIMEOUT_S)
    assert code == 0, f"go build failed:\n{out}{err}"
    code, out, err = await run([go, "vet", "tollway.dev/examples/go"], env=go_environment(gopath), cwd=gopath,
                               timeout=BUILD_TIMEOUT_S)
    assert (code, out, err) == (0, "", ""), f"go vet:\n{out}{err}"
    return binary


def node_command() -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH; install Node.js 18 or later, then `npm ci --prefix tests/interop`")
    for package in ("@grpc/grpc-js", "@grpc/proto-loader", "protobufjs", "google-proto-files"):
        if not (INTEROP / "node_modules" / package / "package.json").exists():
            pytest.fail(f"{package} is not installed in tests/interop/node_modules: run `npm ci --prefix tests/interop`")
    return [node, str(NODE_EXAMPLE)]


# grpc-java, its transport and protobuf-java as Debian packages them (1.41; the example uses
# nothing newer versions removed), and the jars that grpc-java needs beside them.
JAVA_JARS = {
    "libgrpc-java": ["grpc-api", "grpc-context", "grpc-core", "grpc-stub", "grpc-protobuf", "grpc-protobuf-lite",
                     "grpc-netty"],
    "libprotobuf-java": ["protobuf"],
    "libgoogle-common-protos-java": ["proto-google-common-protos"],
    "libguava-java": ["guava"],
    "libgeronimo-annotation-1.3-spec-java": ["geronimo-annotation-1.3-spec"],
    "libnetty-java": ["netty-buffer", "netty-codec", "netty-codec-http", "netty-codec-http2", "netty-common",
                      "netty-handler", "netty-resolver", "netty-transport"],
    "libperfmark-java": ["perfmark-api"],
    "libgoogle-gson-java": ["gson"],
}


@pytest.fixture(scope="module")
async def java_client(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    java = require_tool("java", "default-jre-headless")
    javac = require_tool("javac", "default-jdk-headless")
    protoc = require_tool("protoc", "protobuf-compiler")
    plugin = require_tool("grpc_java_plugin", "protobuf-compiler-grpc-java-plugin")
    jars = [str(require_path(Path("/usr/share/java") / f"{jar}.jar", package))
            for package, names in JAVA_JARS.items() for jar in names]

    work = tmp_path_factory.mktemp("java")
    sources, classes = work / "src", work / "classes"
    sources.mkdir()
    code, out, err = await run([protoc, f"-I{PROTOS}", f"--java_out={sources}",
                                f"--plugin=protoc-gen-grpc-java={plugin}", f"--grpc-java_out={sources}",
                                "tollway/v1/completion.proto"])
    assert (code, out, err) == (0, "", "")
    shutil.copy(JAVA_EXAMPLE, sources / JAVA_EXAMPLE.name)
    classpath = os.pathsep.join(jars)
    code, out, err = await run([javac, "-nowarn", "-d", str(classes), "-cp", classpath,
                                *map(str, sorted(sources.rglob("*.java")))], cwd=work, timeout=BUILD_TIMEOUT_S)
    assert code == 0, f"javac failed:\n{out}{err}"
    return [java, "-cp", os.pathsep.join([str(classes), classpath]), JAVA_EXAMPLE.stem]


@pytest.fixture(params=["go", "node", "java"])
def example(request: pytest.FixtureRequest) -> list[str]:
    """The command that runs one language's example (Go and Java are built once, on first use)."""
    if request.param == "go":
        return [str(request.getfixturevalue("go_client"))]
    if request.param == "java":
        return request.getfixturevalue("java_client")  # type: ignore[no-any-return]
    return node_command()


# -- the gateway and the runs ----------------------------------------------------------------------


@pytest.fixture
async def gateway(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Served]:
    served = Served(tmp_path, upstream, "clients")
    await served.start()
    try:
        yield served
    finally:
        await served.stop()


@dataclass
class Printed:
    code: int
    out: str
    err: str

    def values(self, label: str) -> list[str]:
        return re.findall(rf"^{re.escape(label)}: (.*)$", self.out, re.MULTILINE)


async def run_example(command: list[str], gateway: Served, *, key: str | None) -> Printed:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    # The resolver and balancing policy the README recommends in a cluster, here over one address.
    env.update(TOLLWAY_ADDRESS=f"dns:///{gateway.target}", TOLLWAY_MODEL=MODEL, TOLLWAY_PROTOS=str(PROTOS))
    if key is not None:
        env["TOLLWAY_API_KEY"] = key
    code, out, err = await run([*command, PROMPT], env=env, cwd=INTEROP)
    printed = Printed(code, out, err)
    for secret in gateway.secrets().values():
        assert secret[:8] not in out + err
    return printed


def answers_everything(received: Received) -> Reply:
    """A priced model's answer, streamed when the request asks for a stream."""
    if received.json().get("stream"):
        chunks = [*(chunk(w) for w in WORDS), chunk(finish="stop"), chunk(usage={
            "prompt_tokens": 5, "completion_tokens": len(WORDS), "total_tokens": 5 + len(WORDS)})]
        return Reply(events=sse_events([{**c, "model": UPSTREAM_MODEL} for c in chunks]))
    return Reply(body={**answer(ANSWER), "model": UPSTREAM_MODEL})


def cost_line(cost: pb.Cost) -> str:
    return f"unpriced ({cost.unpriced_reason})" if cost.unpriced else f"{cost.total_nano_usd} nano-USD ({cost.price_entry})"


def usage_line(usage: pb.Usage) -> str:
    return f"input={usage.input.total} output={usage.output.total} total={usage.total_tokens}"


async def test_a_unary_call_and_a_stream_print_the_answer_usage_and_cost(example, gateway, upstream):
    upstream.responder = answers_everything
    # The same calls from Python: what the example must print, figure for figure.
    unary = await gateway.complete(request(MODEL, PROMPT))
    [*_, last] = await gateway.stream(stream_request(MODEL, PROMPT))
    summary = last.summary
    assert not unary.cost.unpriced and unary.cost.total_nano_usd > 0
    upstream.received.clear()

    printed = await run_example(example, gateway, key=gateway.caller_keys["alice"])

    assert (printed.code, printed.err) == (0, ""), printed.out + printed.err
    assert printed.values("answer") == [ANSWER]
    assert printed.values("stream") == ["".join(WORDS)]
    assert printed.values("usage") == [usage_line(unary.usage), usage_line(summary.usage)]
    assert printed.values("usage") == ["input=3 output=1 total=4", "input=5 output=4 total=9"]
    assert printed.values("cost") == [cost_line(unary.cost), cost_line(summary.cost)]
    # The README's sample output is this run's.
    assert printed.out in (ROOT / "README.md").read_text(encoding="utf-8")
    assert printed.values("error") == []
    assert [r.json()["messages"][0]["content"] for r in upstream.received] in (
        [PROMPT, PROMPT], [[{"type": "text", "text": PROMPT}]] * 2)


async def test_an_exhausted_rate_limit_prints_the_status_request_id_and_retry_delay(example, gateway, upstream):
    """The upstream answers 429 with Retry-After: the unary call gets RESOURCE_EXHAUSTED with a
    RetryInfo of that delay; the stream right after finds the only key cooling down and gets
    RESOURCE_EXHAUSTED with a RetryInfo of the time left, without an upstream request."""
    upstream.responder = lambda _: Reply(status=429, body={"error": {"message": "rate limit reached"}},
                                         headers={"Retry-After": "120"})
    upstream.received.clear()

    printed = await run_example(example, gateway, key=gateway.caller_keys["alice"])

    assert (printed.code, printed.err) == (1, ""), printed.out + printed.err
    code_name = "ResourceExhausted" if example[0].endswith("tollway-example") else "RESOURCE_EXHAUSTED"
    errors = printed.values("error")
    assert errors[0] == f"{code_name}: mixrouter: upstream returned HTTP 429: rate limit reached"
    assert re.fullmatch(rf"{code_name}: mixrouter/gemini-2.0-flash: rate limited: every key is cooling down after "
                        r"HTTP 429 from the provider; the first is free again in \d+(\.\d+)?s, retry then",
                        errors[1]), errors
    assert printed.values("answer") == printed.values("stream") == printed.values("usage") == []
    request_ids = printed.values("request id")
    assert len(request_ids) == 2 and len(set(request_ids)) == 2
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in request_ids), request_ids
    first, second = (float(delay.removesuffix("s")) for delay in printed.values("retry after"))
    assert first == 120.0
    assert 100 < second <= 120.0  # printed to the millisecond: the first may round up
    assert len(upstream.received) == 1  # the stream never reached the cooling key's upstream


async def test_without_the_key_the_call_is_unauthenticated(example, gateway, upstream):
    upstream.responder = answers_everything
    upstream.received.clear()

    printed = await run_example(example, gateway, key=None)

    assert printed.code == 1
    code_name = "Unauthenticated" if example[0].endswith("tollway-example") else "UNAUTHENTICATED"
    [unary, stream] = printed.values("error")
    assert unary == stream
    assert unary.startswith(f"{code_name}: ")
    assert printed.values("retry after") == []
    assert upstream.received == []


# -- buf generate with the committed template -------------------------------------------------------


async def test_buf_generate_with_the_committed_template_writes_the_go_stubs_protoc_writes(tmp_path: Path):
    """protos/buf.gen.yaml runs the same local plugins, offline, and buf's compiler gives the
    plugins what protoc gives them: the files differ only in the compiler named in the header."""
    protoc = require_tool("protoc", "protobuf-compiler")
    require_tool("protoc-gen-go", "protoc-gen-go")
    require_tool("protoc-gen-go-grpc", "protoc-gen-go-grpc")
    buf = INTEROP / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        pytest.fail("buf is not installed in tests/interop/node_modules: run `npm ci --prefix tests/interop`")

    code, out, err = await run([str(buf), "generate", "--output", str(tmp_path / "buf")], cwd=PROTOS)
    assert (code, out, err) == (0, "", "")
    by_protoc = tmp_path / "protoc"
    by_protoc.mkdir()
    code, out, err = await run([protoc, f"-I{PROTOS}", f"--go_out={by_protoc}", "--go_opt=paths=source_relative",
                                f"--go-grpc_out={by_protoc}", "--go-grpc_opt=paths=source_relative",
                                "tollway/v1/completion.proto"])
    assert (code, out, err) == (0, "", "")

    def files(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): re.sub(r"(?m)^// \tprotoc +.*$", "// \tprotoc", p.read_text())
                for p in sorted(root.rglob("*.go"))}

    generated = files(tmp_path / "buf" / "gen" / "go")
    assert sorted(generated) == ["tollway/v1/completion.pb.go", "tollway/v1/completion_grpc.pb.go"]
    assert generated == files(by_protoc)
    assert "package tollwayv1" in generated["tollway/v1/completion.pb.go"]


# -- the README shows the programs the suite runs -------------------------------------------------


@pytest.mark.parametrize(("heading", "fence", "path"), [
    ("### Go\n", "go", GO_EXAMPLE), ("### Node\n", "js", NODE_EXAMPLE), ("### Java\n", "java", JAVA_EXAMPLE)])
def test_the_readme_shows_each_example_as_it_is(heading: str, fence: str, path: Path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Calling from your language"):]
    shown = section[section.index(heading):].split(f"```{fence}\n", 1)[1].split("\n```\n", 1)[0] + "\n"
    assert shown == path.read_text(encoding="utf-8"), f"README's {heading.strip()} example differs from {path.name}"


def test_the_readme_sample_output_is_what_the_examples_print():
    """The sample lines in the README carry the figures the OK test above asserts."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Calling from your language"):readme.index("### Go\n")]
    assert f"answer: {ANSWER}\nusage: input=3 output=1 total=4\n" in section
    assert f"stream: {''.join(WORDS)}\nusage: input=5 output=4 total=9\n" in section
    assert "error: RESOURCE_EXHAUSTED: mixrouter: upstream returned HTTP 429: rate limit reached\n" in section
