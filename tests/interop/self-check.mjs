// Self-check of the bus adapter (bus.mjs) alone, without the Rust services: this script plays
// the orders service's side of the bus, and checks that what the adapter's tickets and payments
// peers publish arrives intact, and that what "orders" publishes reaches the peers' listeners
// field by field. On NATS Streaming both sides are the course's own classes (`@sgtickets/common`
// Publisher/Listener over `node-nats-streaming`), plus one raw publish in the byte form a serde
// serializer writes (`"price":20.0`); on JetStream, npm `nats`.
//
// Run (npm ci first), against a broker of your own:
//   nats-streaming-server -a 127.0.0.1 -p 24223 -m 28223 -SD -cid ticketing &
//   NATS_TRANSPORT=streaming NATS_URL=nats://127.0.0.1:24223 NATS_CLUSTER_ID=ticketing node self-check.mjs
//   nats-server -a 127.0.0.1 -p 24224 -js &
//   NATS_TRANSPORT=jetstream NATS_URL=nats://127.0.0.1:24224 NATS_CLUSTER_ID=selfcheck node self-check.mjs
// NATS_TRANSPORT=auto works against either. On JetStream the stream NATS_CLUSTER_ID is created
// (and deleted afterwards) when it does not exist. NATS_SUBJECT_PREFIX defaults to a fresh
// `selfcheck-<hex>.` so that runs never see each other's events.
// Prints `self-check: N passed, M failed`; exits non-zero if any failed.

import assert from "node:assert/strict";
import crypto from "node:crypto";
import { check, finish } from "./checks.mjs";

process.env.NATS_SUBJECT_PREFIX ??= `selfcheck-${crypto.randomBytes(4).toString("hex")}.`;
const PREFIX = process.env.NATS_SUBJECT_PREFIX;
// After the prefix is settled: bus.mjs reads it when loaded.
const { openBus, removeAndClose } = await import("./bus.mjs");
const { connect, AckPolicy, DeliverPolicy, StringCodec } = await import("nats");
const { default: stan } = await import("node-nats-streaming");
const { default: common } = await import("@sgtickets/common");
const { Listener, Publisher, Subjects, OrderStatus } = common;

const objectId = () => crypto.randomBytes(12).toString("hex");
const SUBJECTS = Object.values(Subjects);


// Messages in arrival order, each {data, raw}; `take(match)` waits for the first that matches.
function mailbox() {
  const items = [];
  let wake = () => {};
  return {
    push(item) {
      items.push(item);
      wake();
    },
    async take(match, what, timeoutMs = 10000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const index = items.findIndex((item) => match(item.data));
        if (index >= 0) return items.splice(index, 1)[0];
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`no matching ${what} within ${timeoutMs} ms`);
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, left);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
    },
  };
}

// The orders service's side on NATS Streaming, written as the course's orders service is.
async function streamingOrders() {
  const run = crypto.randomBytes(4).toString("hex");
  const client = stan.connect(process.env.NATS_CLUSTER_ID, `selfcheck-orders-${run}`, { url: process.env.NATS_URL });
  await new Promise((resolve, reject) => {
    client.on("connect", resolve);
    client.on("error", reject);
  });
  const inbox = Object.fromEntries(SUBJECTS.map((subject) => [subject, mailbox()]));
  class RecordingListener extends Listener {
    queueGroupName = `orders-service-${run}`;
    constructor(subject) {
      super(client);
      this.subject = PREFIX + subject;
      this.plain = subject;
    }
    onMessage(data, msg) {
      inbox[this.plain].push({ data, raw: msg.getData() });
      msg.ack();
    }
  }
  class OrderCreatedPublisher extends Publisher {
    subject = PREFIX + Subjects.OrderCreated;
  }
  class OrderCancelledPublisher extends Publisher {
    subject = PREFIX + Subjects.OrderCancelled;
  }
  const publishers = { [Subjects.OrderCreated]: OrderCreatedPublisher, [Subjects.OrderCancelled]: OrderCancelledPublisher };
  for (const subject of [Subjects.TicketCreated, Subjects.TicketUpdated, Subjects.PaymentCreated]) new RecordingListener(subject).listen();
  return {
    inbox,
    publish: (subject, data) => new publishers[subject](client).publish(data),
    publishRaw: (subject, text) =>
      new Promise((resolve, reject) => client.publish(PREFIX + subject, Buffer.from(text, "utf8"), (error) => (error ? reject(error) : resolve()))),
    close: () => removeAndClose(client),
  };
}

// The orders service's side on JetStream (npm `nats`), creating the stream if it is missing.
async function jetstreamOrders() {
  const stream = process.env.NATS_CLUSTER_ID;
  const nc = await connect({ servers: process.env.NATS_URL.replace(/^http:/, "nats:") });
  const js = nc.jetstream();
  const jsm = await nc.jetstreamManager();
  const sc = StringCodec();
  let created = false;
  try {
    await jsm.streams.info(stream);
  } catch {
    await jsm.streams.add({ name: stream, subjects: SUBJECTS.map((subject) => PREFIX + subject) });
    created = true;
  }
  const inbox = Object.fromEntries(SUBJECTS.map((subject) => [subject, mailbox()]));
  const name = `selfcheck-orders-${crypto.randomBytes(4).toString("hex")}`;
  const consumers = [];
  for (const subject of [Subjects.TicketCreated, Subjects.TicketUpdated, Subjects.PaymentCreated]) {
    const durable = `${name}-${subject.replace(":", "-")}`;
    await jsm.consumers.add(stream, { durable_name: durable, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All, filter_subject: PREFIX + subject });
    consumers.push(durable);
    const messages = await (await js.consumers.get(stream, durable)).consume();
    (async () => {
      for await (const message of messages) {
        const raw = sc.decode(message.data);
        inbox[subject].push({ data: JSON.parse(raw), raw });
        message.ack();
      }
    })();
  }
  const publishRaw = async (subject, text) => {
    await js.publish(PREFIX + subject, sc.encode(text), { msgID: crypto.randomUUID() });
  };
  return {
    inbox,
    publish: (subject, data) => publishRaw(subject, JSON.stringify(data)),
    publishRaw,
    async close() {
      for (const durable of consumers) await jsm.consumers.delete(stream, durable);
      if (created) await jsm.streams.delete(stream);
      await nc.drain();
    },
  };
}

const bus = await openBus(process.env);
console.log(`self-check: transport ${bus.transport} (${bus.why}), subjects prefixed ${PREFIX}`);
const orders = bus.transport === "streaming" ? await streamingOrders() : await jetstreamOrders();

// The peers' listeners start before "orders" publishes anything, as in interop.mjs.
const created = await bus.durable(Subjects.OrderCreated);
const cancelled = await bus.durable(Subjects.OrderCancelled);

const ticket = { id: objectId(), version: 0, title: "Café ☕ «concert»", price: 12.5, userId: objectId() };

await check("ticket:created from the tickets peer arrives as the exact JSON text it sent", async () => {
  await bus.publish(Subjects.TicketCreated, ticket);
  const got = await orders.inbox[Subjects.TicketCreated].take((d) => d.id === ticket.id, "ticket:created");
  assert.equal(got.raw, JSON.stringify(ticket));
  assert.deepEqual(got.data, ticket);
});

await check("ticket:updated without orderId arrives without orderId", async () => {
  const update = { id: ticket.id, version: 1, title: "moved", price: 15, userId: ticket.userId };
  await bus.publish(Subjects.TicketUpdated, update);
  const got = await orders.inbox[Subjects.TicketUpdated].take((d) => d.id === ticket.id, "ticket:updated");
  assert.deepEqual(got.data, update);
  assert.ok(!("orderId" in got.data));
});

await check("payment:created from the payments peer arrives field by field", async () => {
  const payment = { id: objectId(), orderId: objectId(), stripeId: "ch_selfcheck" };
  await bus.publish(Subjects.PaymentCreated, payment);
  const got = await orders.inbox[Subjects.PaymentCreated].take((d) => d.id === payment.id, "payment:created");
  assert.deepEqual(got.data, payment);
});

const order = {
  id: objectId(),
  version: 0,
  status: OrderStatus.Created,
  userId: objectId(),
  expiresAt: new Date(Date.now() + 900000).toISOString(),
  ticket: { id: ticket.id, price: 12.5 },
};

await check("order:created reaches the peers' listeners field by field, skipping other orders", async () => {
  await orders.publish(Subjects.OrderCreated, { ...order, id: objectId() });
  await orders.publish(Subjects.OrderCreated, order);
  const event = await created.next((d) => d.id === order.id);
  assert.deepEqual(event, order);
});

await check("order:created in a serializer's own byte form (20.0, other key order) reads as the same event", async () => {
  const id = objectId();
  const raw = `{"ticket":{"id":"${ticket.id}","price":20.0},"id":"${id}","version":0,"status":"created","userId":"${order.userId}","expiresAt":"${order.expiresAt}"}`;
  await orders.publishRaw(Subjects.OrderCreated, raw);
  const event = await created.next((d) => d.id === id);
  assert.deepEqual(event, { ...order, id, ticket: { id: ticket.id, price: 20 } });
});

await check("order:cancelled reaches the peers' listeners field by field", async () => {
  const body = { id: order.id, version: 1, ticket: { id: ticket.id } };
  await orders.publish(Subjects.OrderCancelled, body);
  assert.deepEqual(await cancelled.next((d) => d.id === order.id), body);
});

await check("next() gives up after its timeout when nothing matches", async () => {
  const started = Date.now();
  await assert.rejects(cancelled.next((d) => d.id === "nothing", 1500), /no matching order:cancelled/);
  assert.ok(Date.now() - started >= 1400);
});

await bus.close();
await orders.close();
finish("self-check");
