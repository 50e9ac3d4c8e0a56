// Portkey's start-server listens on every interface and takes no host option: the benchmark
// keeps to 127.0.0.1, so a listen() given a port and no host gets the loopback address.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && args[1] === undefined) {
    args[1] = "127.0.0.1";
  }
  return listen.apply(this, args);
};
