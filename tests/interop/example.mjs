// A minimal Tollway caller in Node: a deadline on every call, the caller's key as bearer
// metadata, one Complete, one StreamComplete, and on failure the status, the request id and
// the RetryInfo detail. @grpc/grpc-js with the .proto loaded at run time: no generated code.
//
//   TOLLWAY_ADDRESS=dns:///tollway.llm.svc.cluster.local:50051 TOLLWAY_API_KEY=... node example.mjs "Say hi"

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { getProtoPath } from "google-proto-files";
import protobuf from "protobufjs";

const address = process.env.TOLLWAY_ADDRESS || "127.0.0.1:50051";
const model = process.env.TOLLWAY_MODEL || "mixrouter/gemini-2.0-flash";
const protos = process.env.TOLLWAY_PROTOS || "protos"; // the directory holding tollway/v1/completion.proto
const prompt = process.argv[2] || "Say hi";
// Without a deadline a call waits as long as the gateway's default budget (five minutes).
const CALL_TIMEOUT_MS = 30_000;

const definition = protoLoader.loadSync("tollway/v1/completion.proto", {
  includeDirs: [protos],
  keepCase: true,
  longs: String, // int64 token counts and nano-USD amounts, exact
  enums: String,
  defaults: true,
  oneofs: true,
});
const { Completion } = grpc.loadPackageDefinition(definition).tollway.v1;
// round_robin spreads calls over every address the name resolves to: with a headless Service,
// one per ready pod. createInsecure: plaintext, as inside a cluster without TLS.
const client = new Completion(address, grpc.credentials.createInsecure(), {
  "grpc.service_config": JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
});

// The error details travel as a google.rpc.Status in the grpc-status-details-bin trailer.
const rpc = new protobuf.Root().loadSync(
  [getProtoPath("rpc", "status.proto"), getProtoPath("rpc", "error_details.proto")], { keepCase: true });
const Status = rpc.lookupType("google.rpc.Status");
const RetryInfo = rpc.lookupType("google.rpc.RetryInfo");

const metadata = new grpc.Metadata();
if (process.env.TOLLWAY_API_KEY) metadata.set("authorization", `Bearer ${process.env.TOLLWAY_API_KEY}`);
const callOptions = () => ({ deadline: Date.now() + CALL_TIMEOUT_MS });
const request = { model, messages: [{ role: "ROLE_USER", parts: [{ text: prompt }] }] };

function printUsage(usage, cost) {
  console.log(`usage: input=${usage.input.total} output=${usage.output.total} total=${usage.total_tokens}`);
  console.log(cost.unpriced ? `cost: unpriced (${cost.unpriced_reason})`
    : `cost: ${cost.total_nano_usd} nano-USD (${cost.price_entry})`);
}

// What a caller acts on: the code, the message, the request id to quote in a report, and for
// RESOURCE_EXHAUSTED how long to wait before trying again.
function printError(err) {
  console.log(`error: ${grpc.status[err.code]}: ${err.details}`);
  console.log(`request id: ${err.metadata?.get("tollway-request-id")[0] ?? "none"}`);
  const [details] = err.metadata?.get("grpc-status-details-bin") ?? [];
  for (const detail of details ? Status.decode(details).details : []) {
    if (detail.type_url === "type.googleapis.com/google.rpc.RetryInfo") {
      const delay = RetryInfo.toObject(RetryInfo.decode(detail.value), { longs: Number }).retry_delay;
      const seconds = (delay?.seconds ?? 0) + (delay?.nanos ?? 0) / 1e9;
      console.log(`retry after: ${seconds.toFixed(3)}s`);
    }
  }
}

function complete() {
  return new Promise((resolve) => {
    client.Complete(request, metadata, callOptions(), (err, response) => {
      if (err) {
        printError(err);
        return resolve(false);
      }
      console.log(`answer: ${response.choices[0].message.parts.map((part) => part.text).join("")}`);
      printUsage(response.usage, response.cost);
      resolve(true);
    });
  });
}

function stream() {
  return new Promise((resolve) => {
    let started = false;
    const call = client.StreamComplete(request, metadata, callOptions());
    call.on("data", (message) => {
      if (message.event === "delta") {
        process.stdout.write((started ? "" : "stream: ") + message.delta.text);
        started = true;
      } else if (message.event === "summary") {
        if (started) process.stdout.write("\n");
        printUsage(message.summary.usage, message.summary.cost);
      }
    });
    call.on("error", (err) => {
      if (started) process.stdout.write("\n");
      printError(err);
      resolve(false);
    });
    call.on("status", (status) => {
      if (status.code === grpc.status.OK) resolve(true);
    });
  });
}

const completed = await complete();
const streamed = await stream();
client.close();
process.exitCode = completed && streamed ? 0 : 1;
