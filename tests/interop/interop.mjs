// Interop check: the wire contract (docs/contract.md §1, §4 and §5) against clients nobody on the
// team wrote. Plays the tickets and payments services (bus.mjs: npm `nats` on JetStream, or the
// course's `@sgtickets/common` Publisher/Listener on NATS Streaming), the auth service
// (`jsonwebtoken`, and `cookie-session` itself to build the cookie) and a browser (fetch), and
// asserts field by field what the Rust orders service answers and publishes. The same checks run
// on either transport.
//
// Run: npm ci; ORDERS_URL=… NATS_URL=… NATS_CLUSTER_ID=… JWT_KEY=… EXPIRATION_WINDOW_SECONDS=…
//      node interop.mjs       (the e2e test `node_clients_of_the_ticketing_stack_…` does this)
// Environment: ORDERS_URL, NATS_URL, NATS_CLUSTER_ID (JetStream: the stream; Streaming: the
// cluster id), NATS_TRANSPORT (jetstream by default, streaming or auto), NATS_SUBJECT_PREFIX,
// JWT_KEY, EXPIRATION_WINDOW_SECONDS (what orders was started with).

import assert from "node:assert/strict";
import http from "node:http";
import crypto from "node:crypto";
import jwt from "jsonwebtoken";
import cookieSession from "cookie-session";
import { openBus } from "./bus.mjs";
import { check, finish } from "./checks.mjs";

const env = (name) => {
  const value = process.env[name];
  if (value === undefined) throw new Error(`${name} must be set`);
  return value;
};
const ORDERS_URL = env("ORDERS_URL");
const JWT_KEY = env("JWT_KEY");
const WINDOW_MS = Number(env("EXPIRATION_WINDOW_SECONDS")) * 1000;
const objectId = () => crypto.randomBytes(12).toString("hex");
const OBJECT_ID = /^[0-9a-f]{24}$/;
const ISO_MILLIS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;


// The auth service: jwt.sign({id, email}, JWT_KEY) stored by cookie-session as req.session.jwt.
async function signIn(email) {
  const user = { id: objectId(), email };
  const token = jwt.sign(user, JWT_KEY);
  const middleware = cookieSession({ name: "session", signed: false });
  const server = http.createServer((req, res) => {
    middleware(req, res, () => {
      req.session = { jwt: token };
      res.end("signed in");
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const response = await fetch(`http://127.0.0.1:${server.address().port}/`);
  server.close();
  const setCookie = response.headers.get("set-cookie");
  const cookie = setCookie.split(";")[0];
  assert.match(cookie, /^session=/);
  return { ...user, cookie };
}

async function api(method, path, { cookie, body, contentType = "application/json" } = {}) {
  const headers = {};
  if (cookie) headers.cookie = cookie;
  if (body !== undefined) headers["content-type"] = contentType;
  const response = await fetch(`${ORDERS_URL}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  return { status: response.status, json, text };
}

// A ticket announced on the stream reaches orders a moment later: 404 until then.
async function reserveAnnounced(cookie, ticketId) {
  const deadline = Date.now() + 10000;
  for (;;) {
    const response = await api("POST", "/api/orders", { cookie, body: { ticketId } });
    if (response.status !== 404 || Date.now() > deadline) return response;
    await new Promise((r) => setTimeout(r, 25));
  }
}

const bus = await openBus(process.env);
console.log(`interop: transport ${bus.transport} (${bus.why})`);

const created = await bus.durable("order:created");
const cancelled = await bus.durable("order:cancelled");
const alice = await signIn("alice@example.com");
const bob = await signIn("bob@example.com");

const ticket = { id: objectId(), version: 0, title: "Interop concert", price: 12.5, userId: objectId() };
await bus.publish("ticket:created", ticket);

let order;
await check("POST /api/orders answers 201 with the order JSON of contract §4.2", async () => {
  const before = Date.now();
  const response = await reserveAnnounced(alice.cookie, ticket.id);
  assert.equal(response.status, 201, response.text);
  order = response.json;
  assert.deepEqual(Object.keys(order).sort(), ["expiresAt", "id", "status", "ticket", "userId", "version"]);
  assert.match(order.id, OBJECT_ID);
  assert.equal(order.status, "created");
  assert.equal(order.userId, alice.id);
  assert.equal(order.version, 0);
  assert.match(order.expiresAt, ISO_MILLIS);
  const expires = Date.parse(order.expiresAt);
  assert.ok(expires >= before + WINDOW_MS - 1000 && expires <= Date.now() + WINDOW_MS + 1000, `expiresAt ${order.expiresAt}`);
  assert.deepEqual(order.ticket, { id: ticket.id, title: ticket.title, price: 12.5, version: 0 });
});

await check("order:created carries exactly the contract §1.6 fields", async () => {
  const event = await created.next((data) => data.id === order.id);
  assert.deepEqual(event, {
    id: order.id,
    version: 0,
    status: "created",
    userId: alice.id,
    expiresAt: order.expiresAt,
    ticket: { id: ticket.id, price: 12.5 },
  });
});

await check("a second buyer is refused with the message the web client shows", async () => {
  const response = await api("POST", "/api/orders", { cookie: bob.cookie, body: { ticketId: ticket.id } });
  assert.equal(response.status, 400);
  assert.deepEqual(response.json, { errors: [{ message: "Ticket is already reserved" }] });
});

await check("GET /api/orders/:id shows the order to its owner and 401 to anyone else", async () => {
  const mine = await api("GET", `/api/orders/${order.id}`, { cookie: alice.cookie });
  assert.equal(mine.status, 200);
  assert.deepEqual(mine.json, order);
  const theirs = await api("GET", `/api/orders/${order.id}`, { cookie: bob.cookie });
  assert.equal(theirs.status, 401);
  assert.deepEqual(theirs.json, { errors: [{ message: "Not authorized" }] });
});

await check("a cookie from cookie-session 1.x (express:sess) is accepted too", async () => {
  const legacy = alice.cookie.replace(/^session=/, "express:sess=");
  const response = await api("GET", "/api/orders", { cookie: legacy });
  assert.equal(response.status, 200);
  assert.deepEqual(response.json.map((o) => o.id), [order.id]);
});

await check("validation, auth and unknown paths answer in the contract's error shape", async () => {
  const missing = await api("POST", "/api/orders", { cookie: alice.cookie, body: {} });
  assert.equal(missing.status, 400);
  assert.deepEqual(missing.json, { errors: [{ message: "TicketId must be provided", field: "ticketId" }] });
  const anonymous = await api("POST", "/api/orders", { body: { ticketId: ticket.id } });
  assert.equal(anonymous.status, 401);
  assert.deepEqual(anonymous.json, { errors: [{ message: "Not authorized" }] });
  const forged = await api("GET", "/api/orders", { cookie: `session=${Buffer.from(JSON.stringify({ jwt: jwt.sign({ id: alice.id, email: alice.email }, "wrong-key") })).toString("base64")}` });
  assert.equal(forged.status, 401);
  const unknown = await api("GET", "/api/nothing-here", { cookie: alice.cookie });
  assert.equal(unknown.status, 404);
  assert.deepEqual(unknown.json, { errors: [{ message: "Not Found" }] });
});

await check("DELETE answers 204 and order:cancelled carries exactly id, version and ticket.id", async () => {
  const response = await api("DELETE", `/api/orders/${order.id}`, { cookie: alice.cookie });
  assert.equal(response.status, 204);
  assert.equal(response.text, "");
  const event = await cancelled.next((data) => data.id === order.id);
  assert.deepEqual(event, { id: order.id, version: 1, ticket: { id: ticket.id } });
});

await check("ticket:updated from the tickets service (orderId omitted) updates the embedded ticket", async () => {
  await bus.publish("ticket:updated", { id: ticket.id, version: 1, title: "Interop concert (moved)", price: 15, userId: ticket.userId });
  const deadline = Date.now() + 10000;
  let shown;
  do {
    shown = await api("GET", `/api/orders/${order.id}`, { cookie: alice.cookie });
    if (shown.json?.ticket?.version === 1) break;
    await new Promise((r) => setTimeout(r, 50));
  } while (Date.now() < deadline);
  assert.deepEqual(shown.json.ticket, { id: ticket.id, title: "Interop concert (moved)", price: 15, version: 1 });
  assert.equal(shown.json.status, "cancelled");
  assert.equal(shown.json.version, 1);
});

await check("payment:created from the payments service completes an order", async () => {
  const second = await reserveAnnounced(bob.cookie, ticket.id);
  assert.equal(second.status, 201, second.text);
  await bus.publish("payment:created", { id: objectId(), orderId: second.json.id, stripeId: "ch_interop" });
  const deadline = Date.now() + 10000;
  let shown;
  do {
    shown = await api("GET", `/api/orders/${second.json.id}`, { cookie: bob.cookie });
    if (shown.json?.status === "complete") break;
    await new Promise((r) => setTimeout(r, 50));
  } while (Date.now() < deadline);
  assert.equal(shown.json.status, "complete");
  const refused = await api("DELETE", `/api/orders/${second.json.id}`, { cookie: bob.cookie });
  assert.equal(refused.status, 400);
  assert.equal(refused.json.errors.length, 1);
});

await bus.close();
finish("interop");
