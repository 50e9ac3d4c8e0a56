// A tool-calling round trip from Node: turn 1 offers a tool and gets the model's call back;
// turn 2 echoes the assistant message unchanged and sends the result in a ROLE_TOOL message.
//
// Usage: node tools_client.mjs HOST:PORT PROTO_ROOT MODEL
// Prints one JSON object with both turns' responses (or their statuses).

import { complete, connect } from "./tollway.mjs";

const [target, protoRoot, model] = process.argv.slice(2);
if (!target || !protoRoot || !model) {
  console.error("usage: node tools_client.mjs HOST:PORT PROTO_ROOT MODEL");
  process.exit(2);
}

const client = connect(target, protoRoot);
const tools = [{
  name: "get_weather",
  description: "The current weather in a city",
  // A google.protobuf.Struct as proto-loader takes it: well-known types come from protobufjs,
  // whose field names are camelCase (stringValue), whatever keepCase says.
  parameters: {
    fields: {
      type: { stringValue: "object" },
      properties: { structValue: { fields: { location: { structValue: { fields: {
        type: { stringValue: "string" } } } } } } },
      required: { listValue: { values: [{ stringValue: "location" }] } },
    },
  },
}];
const question = { role: "ROLE_USER", parts: [{ text: "What is the weather in Paris?" }] };

const first = await complete(client, { model, messages: [question], tools });
const result = { first };
if (first.response) {
  const assistant = first.response.choices[0].message;
  const results = assistant.parts
    .filter((part) => part.content === "tool_call")
    .map((part) => ({ tool_result: { tool_call_id: part.tool_call.id, parts: [{ text: '{"celsius": 21}' }] } }));
  result.second = await complete(client, {
    model,
    tools,
    messages: [question, assistant, { role: "ROLE_TOOL", parts: results }],
  });
}
client.close();
process.stdout.write(JSON.stringify(result) + "\n");
