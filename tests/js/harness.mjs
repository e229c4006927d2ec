// Test harness for the end-to-end tests: starts a private Parley stack (nats-server, a fresh
// Postgres database, parley-persistence-worker, parley-gateway) and offers small helpers around
// the official socket.io-client.
//
// Environment (exported by scripts/test.sh):
//   PARLEY_TEST_NATS_SERVER   path of the nats-server binary
//   PARLEY_TEST_DATABASE_URL  Postgres superuser URL; each stack creates its own database
//   PARLEY_BIN_DIR            folder of the debug binaries (parley-gateway, ...)
//   PARLEY_TEST_NATS_CONFIG   optional: nats/nats-server.conf (used with -sd when present)
// For debugging:
//   PARLEY_JS_RUST_LOG        RUST_LOG of the services (default: warn)
//   PARLEY_JS_KEEP_TMP=1      keep each stack's folder (JetStream store, <process>.log files)
//
// Every stack is torn down by `stop()`; call it from an `after` hook. As a last resort, every
// child still alive when the Node process exits gets SIGKILL.

import { spawn, execFile } from "node:child_process";
import { createHmac, randomBytes, randomUUID } from "node:crypto";
import { createWriteStream, existsSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { io } from "socket.io-client";

const execFileP = promisify(execFile);

/** How long to wait for any single awaited event, unless a call says otherwise. */
export const EVENT_TIMEOUT_MS = 10_000;
/** How long to wait for a stack (or the persistence worker) to become ready. */
export const READY_TIMEOUT_MS = 30_000;

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** RFC 3339, UTC. */
const RFC3339_UTC_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$/;

export const isUuid = (value) => typeof value === "string" && UUID_RE.test(value);
export const isRfc3339Utc = (value) =>
  typeof value === "string" && RFC3339_UTC_RE.test(value) && !Number.isNaN(Date.parse(value));

// ---------------------------------------------------------------------------------------------
// Environment

function requireEnv(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set (scripts/test.sh exports it; see tests/js/harness.mjs)`);
  }
  return value;
}

function binary(name) {
  const file = path.join(requireEnv("PARLEY_BIN_DIR"), name);
  if (!existsSync(file)) throw new Error(`${file} does not exist: build the binaries first`);
  return file;
}

// ---------------------------------------------------------------------------------------------
// Small async helpers

/** Rejects with a message naming `label` when `promise` does not settle within `ms`. */
export function withTimeout(promise, ms, label) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${label}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Polls `probe` (async, returns a truthy value when done) every `intervalMs` until it succeeds;
 * throws after `timeoutMs` with the last error or value in the message.
 */
export async function pollUntil(probe, { timeoutMs = READY_TIMEOUT_MS, intervalMs = 100, label = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await probe();
      if (value) return value;
      last = value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeoutMs} ms polling for ${label} (last: ${detail})`);
    }
    await delay(intervalMs);
  }
}

/** A port that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: "127.0.0.1" });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

// ---------------------------------------------------------------------------------------------
// Tokens

const b64url = (value) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

/** An HS256 JWT with exactly `claims`, signed with `secret` (for tokens the CLI cannot make). */
export function signJwt(claims, secret, header = { alg: "HS256", typ: "JWT" }) {
  const unsigned = `${b64url(header)}.${b64url(claims)}`;
  const signature = createHmac("sha256", secret).update(unsigned).digest("base64url");
  return `${unsigned}.${signature}`;
}

// ---------------------------------------------------------------------------------------------
// Child processes

const liveChildren = new Set();
function killAllChildren() {
  for (const child of liveChildren) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
}
process.on("exit", killAllChildren);
// A test file killed by a signal (Ctrl-C, the runner giving up) takes its stack with it.
for (const [signal, number] of [
  ["SIGINT", 2],
  ["SIGTERM", 15],
  ["SIGHUP", 1],
]) {
  process.once(signal, () => {
    killAllChildren();
    process.exit(128 + number);
  });
}

class Child {
  constructor(name, file, args, env, logDir) {
    this.name = name;
    this.logFile = path.join(logDir, `${name}.log`);
    const log = createWriteStream(this.logFile);
    this.proc = spawn(file, args, {
      env: { PATH: process.env.PATH, HOME: process.env.HOME ?? os.tmpdir(), ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.proc.stdout.pipe(log, { end: false });
    this.proc.stderr.pipe(log, { end: false });
    this.exit = null;
    this.exited = new Promise((resolve) => {
      this.proc.once("exit", (code, signal) => {
        liveChildren.delete(this.proc);
        this.exit = { code, signal };
        resolve(this.exit);
      });
      this.proc.once("error", (error) => {
        liveChildren.delete(this.proc);
        this.exit = { code: null, signal: null, error };
        resolve(this.exit);
      });
    });
    // Close the log only once both pipes have drained; `logged` resolves once it is written.
    this.logged = Promise.all([
      new Promise((r) => this.proc.stdout.once("close", r)),
      new Promise((r) => this.proc.stderr.once("close", r)),
    ]).then(() => new Promise((r) => log.end(r)));
    liveChildren.add(this.proc);
  }

  get alive() {
    return this.exit === null;
  }

  logTail(lines = 30) {
    try {
      return readFileSync(this.logFile, "utf8").split("\n").slice(-lines).join("\n");
    } catch {
      return "(no log)";
    }
  }

  describe() {
    const state = this.alive ? "running" : `exited ${JSON.stringify(this.exit)}`;
    return `${this.name} (${state}); log tail:\n${this.logTail()}`;
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
  async stop(graceMs = 5_000) {
    if (!this.alive) return;
    this.proc.kill("SIGTERM");
    const timer = setTimeout(() => this.alive && this.proc.kill("SIGKILL"), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------
// The stack

const TOKEN_SECRET = `parley-js-test-secret-${randomBytes(12).toString("hex")}`;
/** The gateway's `PARLEY_TRANSCRIPT_KEY`: base64 of a random 32-byte Ed25519 seed. */
const TRANSCRIPT_KEY = randomBytes(32).toString("base64");

/**
 * Starts nats-server, a fresh database, the persistence worker and the gateway; resolves once
 * `GET /readyz` answers 200. Always call `stop()` afterwards (also when this throws: a partially
 * started stack is stopped before the error propagates). `gatewayEnv` adds to the gateway's
 * environment (e.g. a limit of the contract's configuration table).
 */
export async function startStack({ gatewayEnv = {} } = {}) {
  const stack = new Stack(gatewayEnv);
  try {
    await stack.start();
  } catch (error) {
    await stack.stop();
    throw error;
  }
  return stack;
}

class Stack {
  constructor(gatewayEnv = {}) {
    this.gatewayEnv = gatewayEnv;
    this.children = [];
    this.sockets = new Set();
    this.secret = TOKEN_SECRET;
    this.transcriptKey = TRANSCRIPT_KEY;
    this.dbName = `parley_js_${randomBytes(6).toString("hex")}`;
    this.dbCreated = false;
    this.tmpDir = null;
  }

  async start() {
    this.tmpDir = await mkdtemp(path.join(os.tmpdir(), "parley-js-"));
    if (process.env.PARLEY_JS_KEEP_TMP) console.error(`parley-js stack folder: ${this.tmpDir}`);

    // nats-server
    const natsConfig = process.env.PARLEY_TEST_NATS_CONFIG;
    const natsPort = await this.spawnListening(
      (port) => {
        const args = ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", path.join(this.tmpDir, "jetstream")];
        if (natsConfig && existsSync(natsConfig)) args.unshift("-c", natsConfig);
        return this.spawnChild("nats-server", requireEnv("PARLEY_TEST_NATS_SERVER"), args, {});
      },
      // Its own log says so: a connection alone could reach whatever took the port.
      async (port, child) => child.logTail(200).includes("Server is ready") && canConnect(port),
      "nats-server",
    );
    this.natsUrl = `nats://127.0.0.1:${natsPort}`;

    // database
    const adminUrl = requireEnv("PARLEY_TEST_DATABASE_URL");
    await psql(adminUrl, `CREATE DATABASE "${this.dbName}"`);
    this.dbCreated = true;
    const dbUrl = new URL(adminUrl);
    dbUrl.pathname = `/${this.dbName}`;
    this.databaseUrl = dbUrl.toString();

    // services
    const common = {
      NATS_URL: this.natsUrl,
      DATABASE_URL: this.databaseUrl,
      RUST_LOG: process.env.PARLEY_JS_RUST_LOG || "warn",
      // Each worker's admin endpoint on a port of its own: test files run in parallel.
      PARLEY_ADMIN_LISTEN: "127.0.0.1:0",
    };
    this.spawnChild("persistence-worker", binary("parley-persistence-worker"), [], common);
    const httpPort = await this.spawnListening(
      (port) =>
        this.spawnChild("gateway", binary("parley-gateway"), [], {
          ...common,
          PARLEY_JWT_SECRET: this.secret,
          PARLEY_TRANSCRIPT_KEY: this.transcriptKey,
          PARLEY_LISTEN: `127.0.0.1:${port}`,
          ...this.gatewayEnv,
        }),
      async (port) => {
        const base = `http://127.0.0.1:${port}`;
        const signal = AbortSignal.timeout(EVENT_TIMEOUT_MS);
        if ((await fetch(`${base}/readyz`, { signal })).status !== 200) return false;
        // Ours, not whatever took the port: it takes a token signed with this stack's secret.
        const now = Math.floor(Date.now() / 1000);
        const token = signJwt({ sub: randomUUID(), iat: now, exp: now + 60 }, this.secret);
        const mine = await fetch(`${base}/v1/conversations`, { headers: { authorization: `Bearer ${token}` }, signal });
        return mine.status === 200;
      },
      "the gateway's /readyz",
    );
    this.url = `http://127.0.0.1:${httpPort}`;
  }

  /**
   * Starts a child on a free port (`spawnOn(port)` returns it) and resolves with the port once
   * `ready(port, child)` holds. A port found free can be taken before the child binds it: test files
   * run in parallel and open many connections, whose local ports come from the same range. A
   * child that dies saying its address is in use is started again on another port.
   */
  async spawnListening(spawnOn, ready, label) {
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const child = spawnOn(port);
      const deadline = Date.now() + READY_TIMEOUT_MS;
      while (child.alive && Date.now() < deadline) {
        this.assertAlive(child);
        if (await ready(port, child).catch(() => false)) return port;
        await delay(100);
      }
      if (!child.alive) await child.logged;
      if (!child.alive && attempt < 3 && /address already in use/i.test(child.logTail(200))) {
        this.children.splice(this.children.indexOf(child), 1);
        continue;
      }
      this.assertAlive();
      throw new Error(`timed out after ${READY_TIMEOUT_MS} ms waiting for ${label} on port ${port}`);
    }
  }

  spawnChild(name, file, args, env) {
    const child = new Child(name, file, args, env, this.tmpDir);
    this.children.push(child);
    return child;
  }

  /** Throws, with the log of the dead process, when a child of this stack (but `except`) has exited. */
  assertAlive(except = null) {
    const dead = this.children.filter((c) => !c.alive && c !== except);
    if (dead.length) throw new Error(`a stack process died: ${dead.map((c) => c.describe()).join("\n\n")}`);
  }

  async stop() {
    for (const socket of this.sockets) socket.disconnect();
    this.sockets.clear();
    // Services first, so that they do not spend the shutdown reconnecting to NATS.
    const services = this.children.filter((c) => c.name !== "nats-server");
    await Promise.allSettled(services.map((c) => c.stop()));
    await Promise.allSettled(this.children.map((c) => c.stop()));
    if (this.dbCreated) {
      try {
        await psql(requireEnv("PARLEY_TEST_DATABASE_URL"), `DROP DATABASE IF EXISTS "${this.dbName}" WITH (FORCE)`);
      } catch {
        // a leftover test database is harmless; the test Postgres is thrown away
      }
    }
    if (this.tmpDir && !process.env.PARLEY_JS_KEEP_TMP) {
      await rm(this.tmpDir, { recursive: true, force: true });
    }
  }

  // --- identities and projects ------------------------------------------------------------

  /** A token minted by the operator CLI. */
  async mintToken(userId, ttlHours = 1) {
    const { stdout } = await execFileP(binary("parley"), [
      "token",
      "mint",
      "--secret",
      this.secret,
      "--user-id",
      userId,
      "--ttl-hours",
      String(ttlHours),
    ]);
    return stdout.trim();
  }

  /** A fresh user: `{id, name, email, token}`. */
  async user(name) {
    const id = randomUUID();
    return { id, name, email: `${name.toLowerCase()}-${id.slice(0, 8)}@example.test`, token: await this.mintToken(id) };
  }

  /**
   * Publishes `parley.project.started` with the CLI and waits until the conversation exists
   * (`GET /v1/conversations/{id}` answers 200 to the client). Resolves to
   * `{conversationId, projectId, title, client, provider}`.
   */
  async startProject({ title = "Logo redesign", client, provider } = {}) {
    client ??= await this.user("Clara");
    provider ??= await this.user("Pavel");
    const projectId = randomUUID();
    const { stdout } = await execFileP(binary("parley"), [
      "project",
      "start",
      "--nats-url",
      this.natsUrl,
      "--project-id",
      projectId,
      "--title",
      title,
      "--client-id",
      client.id,
      "--client-name",
      client.name,
      "--client-email",
      client.email,
      "--provider-id",
      provider.id,
      "--provider-name",
      provider.name,
      "--provider-email",
      provider.email,
    ]);
    const conversationId = stdout.trim();
    if (!isUuid(conversationId)) throw new Error(`parley project start printed ${JSON.stringify(stdout)}`);
    await pollUntil(
      async () => {
        this.assertAlive();
        const response = await this.http("GET", `/v1/conversations/${conversationId}`, { token: client.token });
        return response.status === 200;
      },
      { label: `conversation ${conversationId} to exist` },
    );
    return { conversationId, projectId, title, client, provider };
  }

  // --- HTTP ---------------------------------------------------------------------------------

  /** `{status, body}`; `body` is parsed JSON when the response is JSON, else text. */
  async http(method, urlPath, { token, body, headers = {} } = {}) {
    const init = { method, headers: { ...headers } };
    if (token !== undefined) init.headers.authorization = `Bearer ${token}`;
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = typeof body === "string" ? body : JSON.stringify(body);
    }
    const response = await fetch(`${this.url}${urlPath}`, init);
    const text = await response.text();
    let parsed = text;
    if ((response.headers.get("content-type") ?? "").includes("json")) {
      try {
        parsed = JSON.parse(text);
      } catch {
        // keep the text
      }
    }
    return { status: response.status, body: parsed };
  }

  // --- Socket.IO ----------------------------------------------------------------------------

  /** A socket of its own (no multiplexing, no reconnection), closed by `stop()`. */
  rawSocket(options = {}) {
    const socket = io(this.url, { forceNew: true, reconnection: false, ...options });
    this.sockets.add(socket);
    return socket;
  }

  /**
   * A connected socket for `token`, recording every `message:new` in `socket.received`.
   * `transports`: undefined (default: polling, then upgrade), ["websocket"] or ["polling"].
   * With the default transports this waits until the upgrade to WebSocket is done.
   */
  async connect(token, { transports } = {}) {
    const options = { auth: { token } };
    if (transports) options.transports = transports;
    const socket = this.rawSocket({ ...options, autoConnect: false });
    socket.received = [];
    socket.on("message:new", (message) => socket.received.push(message));
    socket.disconnects = [];
    socket.on("disconnect", (reason) => socket.disconnects.push(reason));
    const connected = new Promise((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("connect_error", reject);
    });
    // Listen for the upgrade before connecting, so that it cannot be missed.
    const upgraded =
      !transports
        ? new Promise((resolve) => socket.io.once("open", () => socket.io.engine.once("upgrade", resolve)))
        : null;
    socket.connect();
    await withTimeout(connected, EVENT_TIMEOUT_MS, "socket connect");
    if (upgraded) {
      if (socket.io.engine.transport.name !== "websocket") {
        await withTimeout(upgraded, EVENT_TIMEOUT_MS, "the upgrade from polling to websocket");
      }
    }
    return socket;
  }

  /**
   * The error of a connection attempt that must fail: the server's verdict. An attempt that
   * failed below Socket.IO (engine.io's transport: "xhr poll error", "websocket error") got no
   * verdict, so it is made again, as the official client's reconnection would; each such
   * failure is printed, with what the transport saw. (Seen once in CI: "xhr poll error" 12 ms
   * into a refused connect over polling; not reproduced in some 25 runs of the file here.)
   */
  async connectError(options) {
    for (let attempt = 1; ; attempt++) {
      const socket = this.rawSocket({ ...options, autoConnect: false });
      const outcome = new Promise((resolve) => {
        socket.once("connect", () => resolve({ connected: true }));
        socket.once("connect_error", (error) => resolve({ error }));
      });
      socket.connect();
      const result = await withTimeout(outcome, EVENT_TIMEOUT_MS, "connect or connect_error");
      socket.disconnect();
      this.sockets.delete(socket);
      if (result.error?.type !== "TransportError" || attempt === 3) return result;
      const seen = result.error.description?.message ?? result.error.description ?? "";
      console.error(`# connect attempt ${attempt} failed in its transport (${result.error.message}: ${seen}); again`);
    }
  }
}

/** Sends `event` with `payload` (when given) and resolves to the acknowledgement. */
export async function request(socket, event, ...payload) {
  try {
    return await socket.timeout(EVENT_TIMEOUT_MS).emitWithAck(event, ...payload);
  } catch (error) {
    const state = `socket ${socket.connected ? "still connected" : "not connected"}, disconnects: ${JSON.stringify(socket.disconnects ?? [])}`;
    throw new Error(`no ack of ${event} within ${EVENT_TIMEOUT_MS} ms (${error.message}; ${state})`);
  }
}

/**
 * Resolves once `socket.received` (the `message:new` log kept by `connect`) holds a message
 * matching `predicate`; consumes nothing.
 */
export function waitForMessage(socket, predicate, label = "message:new") {
  const found = socket.received.find(predicate);
  if (found) return Promise.resolve(found);
  let listener;
  const arrived = new Promise((resolve) => {
    listener = (message) => {
      if (predicate(message)) resolve(message);
    };
    socket.on("message:new", listener);
  });
  return withTimeout(arrived, EVENT_TIMEOUT_MS, label).finally(() => socket.off("message:new", listener));
}

async function psql(url, sql) {
  try {
    await execFileP("psql", [url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql]);
  } catch (error) {
    throw new Error(`psql ${JSON.stringify(sql)} failed: ${error.stderr || error.message}`);
  }
}
