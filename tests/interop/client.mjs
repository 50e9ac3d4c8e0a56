// A Tollway caller written in Node: @grpc/grpc-js with the .proto loaded at run time by
// @grpc/proto-loader, no generated code. It proves the contract works from another language.
//
// Usage: node client.mjs HOST:PORT PROTO_ROOT 'REQUEST_JSON'
//
// Runs, in order: Complete(request); StreamComplete(request); Complete on an unknown
// provider; StreamComplete(request) again (the test makes the upstream cut that one off).
// Prints one JSON object with what each call returned, or its status code and details.

import { complete as completeOn, connect, streamComplete as streamOn } from "./tollway.mjs";

const [target, protoRoot, requestJson] = process.argv.slice(2);
if (!target || !protoRoot || !requestJson) {
  console.error("usage: node client.mjs HOST:PORT PROTO_ROOT 'REQUEST_JSON'");
  process.exit(2);
}

const client = connect(target, protoRoot);
// Bytes fields may be given as base64 strings: proto-loader serializes with fromObject.
const request = JSON.parse(requestJson);
const complete = (req) => completeOn(client, req);
const streamComplete = (req) => streamOn(client, req);

const result = {};
result.complete = await complete(request);
result.stream = await streamComplete(request);
result.unknown_provider = await complete({ ...request, model: "nosuch/some-model" });
result.cut_stream = await streamComplete(request);
client.close();
process.stdout.write(JSON.stringify(result) + "\n");
