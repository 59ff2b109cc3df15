// The bridge's service as the backend loads it: @grpc/proto-loader with the backend's options
// (`keepCase`, `longs: String`, `enums: String`, `defaults`), from proto/ in this repository.
// Shared by the Node clients here.
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));
const definition = protoLoader.loadSync(path.join(here, "..", "..", "proto", "livekit_bridge.proto"), {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
});

export const { LiveKitBridge } = grpc.loadPackageDefinition(definition).mentra.livekit.bridge;
export { grpc };
