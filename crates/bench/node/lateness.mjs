// Lateness of expiration:complete on NATS Streaming, measured from outside the worker, so that
// any worker (seed-worker.mjs, the course's Node service, or the Rust `expiration` binary) is
// measured the same way. It plays the orders service: publishes N `order:created` events (valid
// per docs/contract.md §1: 24-hex ids, version 0, status created, expiresAt ISO-8601 with millis)
// through node-nats-streaming, listens for `expiration:complete`, and compares each arrival with
// the order's expiresAt.
//
//   --burst N --within-ms W   every expiresAt falls within one window of W ms (evenly spread),
//                             starting --lead-ms after the start (default 5000): all N events
//                             are published at once, so the worker has the lead time, less the
//                             publish time (printed), to take them in before the first is due.
//   --steady N --over-ms T    expiresAt evenly spread over T ms; each event is published
//                             --lead-ms (default 1000) before it is due, so orders also arrive
//                             steadily (N/T per ms) while earlier ones fire.
//   --timeout-ms X            an order whose expiration:complete has not arrived X ms (default
//                             30000) after the last due time is lost.
//   --settle-ms S             after the last expected arrival, wait S ms (default 1000) for duplicates.
//
// Run, with the worker already listening (queue group `expiration-service`) on the same broker:
//   NATS_URL=nats://127.0.0.1:24223 NATS_CLUSTER_ID=ticketing node lateness.mjs --burst 5000 --within-ms 100
//   NATS_URL=nats://127.0.0.1:24223 NATS_CLUSTER_ID=ticketing node lateness.mjs --steady 2000 --over-ms 5000
// Environment: NATS_URL, NATS_CLUSTER_ID, NATS_SUBJECT_PREFIX (as given to the worker),
// NATS_CLIENT_ID (default `lateness-<random>`).
//
// The subscription to expiration:complete is a plain one (auto ack), registered before the first
// publish and starting with new messages only; events for orders of other runs are counted as
// `foreign` and otherwise ignored. Lateness = local receive time - expiresAt; `stored_*` is the
// same from the broker's storage timestamp (excludes delivery to this client).
//
// Output: progress lines, then one summary line, e.g.
//   lateness burst n=5000 received=5000 lost=0 dup=0 early=0 bad=0 foreign=0 p50=891.7 p90=1494.3 p99=1637.9 max=1652.4 min=8.1 stored_p50=891.6 stored_p99=1637.6 ms
// Exit code: 0, or 1 when any order was lost, arrived early or had a body other than {"orderId"};
// 2 on bad arguments or when the broker cannot be reached.

import crypto from "node:crypto";
import { parseArgs } from "node:util";
import { performance } from "node:perf_hooks";
import nats from "node-nats-streaming";

const usage = "usage: lateness.mjs (--burst N --within-ms W | --steady N --over-ms T) [--lead-ms L] [--timeout-ms X] [--settle-ms S]";
let options;
try {
  ({ values: options } = parseArgs({
    options: {
      burst: { type: "string" },
      "within-ms": { type: "string" },
      steady: { type: "string" },
      "over-ms": { type: "string" },
      "lead-ms": { type: "string" },
      "timeout-ms": { type: "string", default: "30000" },
      "settle-ms": { type: "string", default: "1000" },
    },
  }));
} catch (error) {
  console.error(`lateness: ${error.message}\n${usage}`);
  process.exit(2);
}
const number = (name, value, min) => {
  const n = Number(value);
  if (value === undefined || !Number.isFinite(n) || n < min) {
    console.error(`lateness: --${name} ${value ?? "(missing)"} is invalid: expected a number >= ${min}\n${usage}`);
    process.exit(2);
  }
  return n;
};
if ((options.burst === undefined) === (options.steady === undefined)) {
  console.error(`lateness: give exactly one of --burst and --steady\n${usage}`);
  process.exit(2);
}
const mode = options.burst !== undefined ? "burst" : "steady";
const count = Math.trunc(number(mode, options[mode], 1));
const spanMs = mode === "burst" ? number("within-ms", options["within-ms"], 0) : number("over-ms", options["over-ms"], 0);
const leadMs = number("lead-ms", options["lead-ms"] ?? (mode === "burst" ? "5000" : "1000"), 0);
const timeoutMs = number("timeout-ms", options["timeout-ms"], 0);
const settleMs = number("settle-ms", options["settle-ms"], 0);

for (const name of ["NATS_URL", "NATS_CLUSTER_ID"]) {
  if (!process.env[name]) {
    console.error(`lateness: ${name} must be set`);
    process.exit(2);
  }
}
const PREFIX = process.env.NATS_SUBJECT_PREFIX ?? "";
const clientId = process.env.NATS_CLIENT_ID || `lateness-${crypto.randomBytes(4).toString("hex")}`;
const objectId = () => crypto.randomBytes(12).toString("hex");
const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

// --- connect and listen before anything is published ------------------------------------------
const client = nats.connect(process.env.NATS_CLUSTER_ID, clientId, { url: process.env.NATS_URL });
try {
  await new Promise((resolve, reject) => {
    client.on("connect", resolve);
    client.on("error", reject);
  });
} catch (error) {
  console.error(`lateness: cannot connect to NATS Streaming cluster ${process.env.NATS_CLUSTER_ID} at ${process.env.NATS_URL}: ${error.message ?? error}`);
  process.exit(2);
}

const orders = new Map(); // orderId -> { expiresAt (ms), arrivals: [{ at, stored }] }
let foreign = 0;
let bad = 0;
let received = 0;
let wake = () => {};
const subscription = client.subscribe(PREFIX + "expiration:complete");
subscription.on("message", (msg) => {
  const at = now();
  const stored = msg.getTimestampRaw() / 1e6;
  let data;
  try {
    data = JSON.parse(msg.getData());
  } catch {
    bad += 1;
    return;
  }
  const order = orders.get(data?.orderId);
  if (!order) {
    foreign += 1;
    return;
  }
  if (Object.keys(data).length !== 1) bad += 1;
  if (order.arrivals.push({ at, stored }) === 1) received += 1;
  wake();
});
await new Promise((resolve, reject) => {
  subscription.on("ready", resolve);
  subscription.on("error", reject);
  subscription.on("timeout", reject);
});

// --- publish the orders -------------------------------------------------------------------------
const start = now();
const firstDue = Math.ceil(start + leadMs);
const dueTimes = Array.from({ length: count }, (_, i) => Math.round(firstDue + (count > 1 ? (i * spanMs) / (count - 1) : 0)));
const lastDue = dueTimes[count - 1];
const userId = objectId();

function publish(expiresAt) {
  const event = {
    id: objectId(),
    version: 0,
    status: "created",
    userId,
    expiresAt: new Date(expiresAt).toISOString(),
    ticket: { id: objectId(), price: 20 },
  };
  orders.set(event.id, { expiresAt, arrivals: [] });
  return new Promise((resolve, reject) => {
    client.publish(PREFIX + "order:created", JSON.stringify(event), (error) => (error ? reject(new Error(error)) : resolve()));
  });
}

// At most this many PubAcks outstanding (node-nats-streaming refuses more than 16384).
const pending = new Set();
async function send(expiresAt) {
  while (pending.size >= 8192) await Promise.race(pending);
  const ack = publish(expiresAt).finally(() => pending.delete(ack));
  pending.add(ack);
}

console.log(
  `lateness: ${mode} of ${count} order:created, due ${mode === "burst" ? "within" : "over"} ${spanMs} ms from ${leadMs} ms after the start` +
    (mode === "steady" ? `, each published ${leadMs} ms before it is due` : "") +
    ` (subjects ${PREFIX}order:created -> ${PREFIX}expiration:complete, client ${clientId})`,
);
if (mode === "burst") {
  for (const due of dueTimes) await send(due);
} else {
  for (let i = 0; i < count; ) {
    const t = now();
    while (i < count && dueTimes[i] - leadMs <= t) await send(dueTimes[i++]);
    if (i < count) await sleep(dueTimes[i] - leadMs - now());
  }
}
await Promise.all(pending);
const published = now();
console.log(
  `lateness: all ${count} published and acknowledged in ${(published - start).toFixed(0)} ms; ` +
    (mode === "burst"
      ? `the first is due ${(firstDue - published).toFixed(0)} ms later (the worker's time to take them in), the last ${(lastDue - published).toFixed(0)} ms later`
      : `the last is due ${(lastDue - published).toFixed(0)} ms later`),
);

// --- wait for every expiration:complete (or the timeout), then for duplicates -------------------
const deadline = lastDue + timeoutMs;
while (received < count && now() < deadline) {
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, Math.min(1000, deadline - now()));
    wake = () => {
      clearTimeout(timer);
      resolve();
    };
  });
}
wake = () => {};
await sleep(settleMs);

// --- report -------------------------------------------------------------------------------------
const late = [];
const lateStored = [];
let duplicates = 0;
let early = 0;
for (const { expiresAt, arrivals } of orders.values()) {
  if (arrivals.length === 0) continue;
  duplicates += arrivals.length - 1;
  const first = arrivals[0];
  if (first.at < expiresAt) early += 1;
  late.push(first.at - expiresAt);
  lateStored.push(first.stored - expiresAt);
}
const lost = count - late.length;
const sorted = (values) => Float64Array.from(values).sort();
const percentile = (values, p) => (values.length === 0 ? NaN : values[Math.min(values.length - 1, Math.ceil((p / 100) * values.length) - 1)]);
const ms = (value) => (Number.isNaN(value) ? "-" : value.toFixed(1));
const byArrival = sorted(late);
const byStorage = sorted(lateStored);
console.log(
  `lateness ${mode} n=${count} received=${late.length} lost=${lost} dup=${duplicates} early=${early} bad=${bad} foreign=${foreign}` +
    ` p50=${ms(percentile(byArrival, 50))} p90=${ms(percentile(byArrival, 90))} p99=${ms(percentile(byArrival, 99))}` +
    ` max=${ms(byArrival[byArrival.length - 1] ?? NaN)} min=${ms(byArrival[0] ?? NaN)}` +
    ` stored_p50=${ms(percentile(byStorage, 50))} stored_p99=${ms(percentile(byStorage, 99))} ms`,
);

// Leave the broker tidy: the server otherwise keeps this client until its heartbeats fail.
await new Promise((resolve) => {
  setTimeout(resolve, 3000);
  client.once("close", resolve);
  client.close();
});
process.exit(lost > 0 || early > 0 || bad > 0 ? 1 : 0);
