// A Tollway caller written in Node: @grpc/grpc-js with the .proto loaded at run time by
// @grpc/proto-loader, no generated code. It proves the contract works from another language.
//
// Usage: node client.mjs HOST:PORT PROTO_ROOT 'REQUEST_JSON'
//
// Runs, in order: Complete(request); StreamComplete(request); Complete on an unknown
// provider; StreamComplete(request) again (the test makes the upstream cut that one off).
// Prints one JSON object with what each call returned, or its status code and details.

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import path from "node:path";

const [target, protoRoot, requestJson] = process.argv.slice(2);
if (!target || !protoRoot || !requestJson) {
  console.error("usage: node client.mjs HOST:PORT PROTO_ROOT 'REQUEST_JSON'");
  process.exit(2);
}

const definition = protoLoader.loadSync(path.join("tollway", "v1", "completion.proto"), {
  includeDirs: [protoRoot],
  keepCase: true, // field names exactly as in the .proto: max_tokens, total_tokens
  longs: String, // int64 usage counts arrive as decimal strings, as in proto3 JSON
  enums: String,
  defaults: true, // zeros are printed, as a caller reading the fields sees them
  oneofs: true, // sets e.g. `event: "delta"` beside the oneof member
});
const tollway = grpc.loadPackageDefinition(definition).tollway.v1;
const client = new tollway.Completion(target, grpc.credentials.createInsecure());

// Bytes fields may be given as base64 strings: proto-loader serializes with fromObject.
const request = JSON.parse(requestJson);

function deadline() {
  return new Date(Date.now() + 20_000);
}

function statusOf(err) {
  return {
    code: err.code,
    code_name: grpc.status[err.code],
    details: err.details,
    request_id: err.metadata?.get("tollway-request-id")[0] ?? null,
  };
}

function complete(req) {
  return new Promise((resolve) => {
    client.Complete(req, { deadline: deadline() }, (err, response) => {
      resolve(err ? { error: statusOf(err) } : { response });
    });
  });
}

function streamComplete(req) {
  return new Promise((resolve) => {
    const deltas = [];
    let summary = null;
    const call = client.StreamComplete(req, { deadline: deadline() });
    call.on("data", (message) => {
      if (message.event === "delta") deltas.push(message.delta);
      else if (message.event === "summary") summary = message.summary;
    });
    call.on("error", (err) => resolve({ deltas, summary, error: statusOf(err) }));
    call.on("status", (status) => {
      if (status.code === grpc.status.OK) resolve({ deltas, summary, status: "OK" });
    });
  });
}

const result = {};
result.complete = await complete(request);
result.stream = await streamComplete(request);
result.unknown_provider = await complete({ ...request, model: "nosuch/some-model" });
result.cut_stream = await streamComplete(request);
client.close();
process.stdout.write(JSON.stringify(result) + "\n");
