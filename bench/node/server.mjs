// The baseline of the idle-connections bench: a minimal Socket.IO server with the library's
// defaults, an auth middleware that accepts any non-empty `auth.token` (roughly the gateway's
// auth cost, without the JWT check), and no event handlers.
//
//   node bench/node/server.mjs [port]     (or PORT=…; 127.0.0.1 only)
//
// Prints `listening <port>` once it accepts connections.
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[2] ?? process.env.PORT ?? 3000);
const httpServer = createServer();
const io = new Server(httpServer, { serveClient: false });

io.use((socket, next) => {
  const token = socket.handshake.auth?.token;
  next(typeof token === "string" && token.length > 0 ? undefined : new Error("unauthorized"));
});

httpServer.listen(port, "127.0.0.1", () => console.log(`listening ${httpServer.address().port}`));
process.on("SIGTERM", () => process.exit(0));
