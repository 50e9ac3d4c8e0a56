// The Tollway client both interop scripts use: @grpc/grpc-js with the .proto loaded at run
// time by @grpc/proto-loader, no generated code.

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import path from "node:path";

export function connect(target, protoRoot) {
  const definition = protoLoader.loadSync(path.join("tollway", "v1", "completion.proto"), {
    includeDirs: [protoRoot],
    keepCase: true, // field names exactly as in the .proto: max_tokens, total_tokens
    longs: String, // int64 usage counts arrive as decimal strings, as in proto3 JSON
    enums: String,
    defaults: true, // zeros are printed, as a caller reading the fields sees them
    oneofs: true, // sets e.g. `event: "delta"` beside the oneof member
  });
  const tollway = grpc.loadPackageDefinition(definition).tollway.v1;
  return new tollway.Completion(target, grpc.credentials.createInsecure());
}

function deadline() {
  return new Date(Date.now() + 20_000);
}

export function statusOf(err) {
  return {
    code: err.code,
    code_name: grpc.status[err.code],
    details: err.details,
    request_id: err.metadata?.get("tollway-request-id")[0] ?? null,
  };
}

export function complete(client, req) {
  return new Promise((resolve) => {
    client.Complete(req, { deadline: deadline() }, (err, response) => {
      resolve(err ? { error: statusOf(err) } : { response });
    });
  });
}

export function streamComplete(client, req) {
  return new Promise((resolve) => {
    const deltas = [];
    const tool_call_deltas = [];
    let summary = null;
    const call = client.StreamComplete(req, { deadline: deadline() });
    call.on("data", (message) => {
      if (message.event === "delta") deltas.push(message.delta);
      else if (message.event === "tool_call_delta") tool_call_deltas.push(message.tool_call_delta);
      else if (message.event === "summary") summary = message.summary;
    });
    call.on("error", (err) => resolve({ deltas, tool_call_deltas, summary, error: statusOf(err) }));
    call.on("status", (status) => {
      if (status.code === grpc.status.OK) resolve({ deltas, tool_call_deltas, summary, status: "OK" });
    });
  });
}
