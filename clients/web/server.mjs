// The web chat's server: serves the page, the built @parley/client and socket.io-client's ES
// module, and proxies /v1/* and /socket.io/* (websocket upgrades included) to a gateway, so the
// page talks to the gateway from its own origin (the gateway has no CORS and serves no files).
// Node's standard library only.
//
//   node server.mjs --gateway http://127.0.0.1:8080 [--port 8090] [--host 127.0.0.1]
//
// Prints `listening on http://HOST:PORT/` once ready. `startServer()` does the same in-process
// (the browser tests use it).

import { createReadStream, existsSync, statSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const PUBLIC = path.join(here, "public");
const LIB = path.join(here, "../js/dist");
const SOCKET_IO = path.join(here, "../js/node_modules/socket.io-client/dist/socket.io.esm.min.js");

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".map": "application/json; charset=utf-8",
  ".json": "application/json; charset=utf-8",
  ".png": "image/png",
  ".svg": "image/svg+xml",
};

/** The file a path maps to, or null; never outside its root. */
function resolveStatic(urlPath) {
  const pathname = decodeURIComponent(urlPath.split("?")[0]);
  let root = PUBLIC;
  let rest = pathname;
  if (pathname === "/vendor/socket.io-client.js") return SOCKET_IO;
  if (pathname.startsWith("/lib/")) {
    root = LIB;
    rest = pathname.slice("/lib".length);
  }
  if (rest.endsWith("/")) rest += "index.html";
  const file = path.join(root, path.normalize(rest));
  if (!file.startsWith(root + path.sep)) return null;
  return existsSync(file) && statSync(file).isFile() ? file : null;
}

const proxied = (url) => url.startsWith("/v1/") || url === "/v1" || url.startsWith("/socket.io/");

/**
 * Starts the server; resolves to `{url, close()}`. `gateway`: the gateway's base URL; `port` 0
 * picks a free one.
 */
export function startServer({ gateway, port = 0, host = "127.0.0.1" }) {
  const target = new URL(gateway);
  const targetPort = Number(target.port || 80);
  const sockets = new Set();

  const server = http.createServer((req, res) => {
    if (proxied(req.url)) {
      const upstream = http.request(
        {
          host: target.hostname,
          port: targetPort,
          method: req.method,
          path: req.url,
          headers: { ...req.headers, host: target.host },
        },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        },
      );
      upstream.on("error", (error) => {
        if (!res.headersSent) res.writeHead(502, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: { code: "unavailable", message: `gateway: ${error.message}` } }));
      });
      req.pipe(upstream);
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405).end();
      return;
    }
    const file = resolveStatic(req.url);
    if (!file) {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
      return;
    }
    res.writeHead(200, {
      "content-type": TYPES[path.extname(file)] ?? "application/octet-stream",
      "cache-control": "no-cache",
    });
    if (req.method === "HEAD") res.end();
    else createReadStream(file).pipe(res);
  });

  // WebSocket upgrades: the request as received, then bytes both ways.
  server.on("upgrade", (req, socket, head) => {
    if (!proxied(req.url)) {
      socket.destroy();
      return;
    }
    const upstream = net.connect(targetPort, target.hostname, () => {
      const lines = [`${req.method} ${req.url} HTTP/${req.httpVersion}`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        const name = req.rawHeaders[i];
        lines.push(`${name}: ${name.toLowerCase() === "host" ? target.host : req.rawHeaders[i + 1]}`);
      }
      upstream.write(`${lines.join("\r\n")}\r\n\r\n`);
      if (head?.length) upstream.write(head);
      socket.pipe(upstream).pipe(socket);
    });
    const end = () => {
      socket.destroy();
      upstream.destroy();
    };
    upstream.on("error", end);
    socket.on("error", end);
    upstream.on("close", end);
    socket.on("close", end);
  });
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });

  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      const address = server.address();
      resolve({
        url: `http://${host}:${address.port}/`,
        close: () =>
          new Promise((done) => {
            for (const socket of sockets) socket.destroy();
            server.close(() => done());
          }),
      });
    });
  });
}

// ------------------------------------------------------------------------------ command line

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const option = (name, fallback) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 && args[i + 1] ? args[i + 1] : fallback;
  };
  const gateway = option("gateway", process.env.PARLEY_URL ?? "http://127.0.0.1:8080");
  if (!existsSync(path.join(LIB, "index.js"))) {
    console.error("clients/js is not built: run `npm ci && npm run build` in clients/js first");
    process.exit(1);
  }
  const { url, close } = await startServer({
    gateway,
    port: Number(option("port", "8090")),
    host: option("host", "127.0.0.1"),
  });
  console.log(`listening on ${url} (gateway ${gateway})`);
  for (const signal of ["SIGINT", "SIGTERM"]) {
    process.once(signal, () => close().then(() => process.exit(0)));
  }
}
