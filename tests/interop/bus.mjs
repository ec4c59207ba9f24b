// The bus side of the interop check: how the Node peers (the tickets and payments services)
// publish and listen, over either transport the Rust services speak (docs/contract.md §2).
//
//   NATS_TRANSPORT=jetstream (default) npm `nats` 2.x: JetStream publish with a msgID, one durable
//                                      pull consumer per subject on the stream NATS_CLUSTER_ID.
//   NATS_TRANSPORT=streaming           the course's own library: `@sgtickets/common` 1.0.24's
//                                      Publisher and Listener over `node-nats-streaming` 0.2.6,
//                                      connected as the course's nats-wrapper does, on the
//                                      NATS Streaming cluster NATS_CLUSTER_ID.
//   NATS_TRANSPORT=auto                streaming if a NATS Streaming server answers
//                                      `_STAN.discover.<NATS_CLUSTER_ID>`, otherwise jetstream.
//
// Subjects get NATS_SUBJECT_PREFIX prepended (tests share one broker). Used by interop.mjs (the
// checks against the Rust services) and self-check.mjs (this adapter alone against a broker).
//
// The adapter: `const bus = await openBus(process.env)`, then
//   bus.publish(subject, data)       publish as the peer that owns the subject would
//   bus.durable(subject)             start listening; `.next(match, timeoutMs)` resolves with the
//                                    next event body satisfying `match` (earlier ones are acked
//                                    and skipped), or throws after timeoutMs
//   bus.close()                      remove what this run created on the broker, disconnect
// and `bus.transport` / `bus.why` say which transport was chosen and why.

import assert from "node:assert/strict";
import crypto from "node:crypto";
import { connect, AckPolicy, DeliverPolicy, StringCodec } from "nats";
import stan from "node-nats-streaming";
import common from "@sgtickets/common";

const { Listener, Publisher, Subjects } = common;
const PREFIX = process.env.NATS_SUBJECT_PREFIX ?? "";
const sc = StringCodec();
const randomHex = (bytes) => crypto.randomBytes(bytes).toString("hex");

const required = (env, name) => {
  const value = env[name];
  if (value === undefined || value === "") throw new Error(`${name} must be set`);
  return value;
};

export async function openBus(env) {
  const url = required(env, "NATS_URL");
  const cluster = required(env, "NATS_CLUSTER_ID");
  const { transport, why } = await chooseTransport(env.NATS_TRANSPORT, url, cluster);
  const bus = transport === "streaming" ? await openStreaming(url, cluster) : await openJetStream(url, cluster);
  return Object.assign(bus, { transport, why });
}

async function chooseTransport(setting, url, cluster) {
  const value = setting === undefined || setting === "" ? "jetstream" : setting;
  if (value === "jetstream" || value === "streaming") {
    return { transport: value, why: `NATS_TRANSPORT=${setting ?? "(unset)"}` };
  }
  if (value !== "auto") throw new Error(`NATS_TRANSPORT=${value} is invalid: expected auto, streaming or jetstream`);
  // An empty ConnectRequest: a Streaming server answers (with an error), anything else does not.
  const nc = await connect({ servers: url.replace(/^http:/, "nats:") });
  try {
    await nc.request(`_STAN.discover.${cluster}`, new Uint8Array(), { timeout: 2000 });
    return { transport: "streaming", why: `auto: _STAN.discover.${cluster} answered` };
  } catch (error) {
    return { transport: "jetstream", why: `auto: no answer on _STAN.discover.${cluster} (${error.code ?? error.message})` };
  } finally {
    await nc.close();
  }
}

// ---------------------------------------------------------------------------------------------
// JetStream: the tickets and payments services publish `JSON.stringify(data)` on the plain
// subject; our own durable consumer per subject, as a Node peer (payments) would have.

async function openJetStream(url, stream) {
  const nc = await connect({ servers: url.replace(/^http:/, "nats:") });
  const js = nc.jetstream();
  const jsm = await nc.jetstreamManager();
  const consumers = [];
  return {
    async publish(subject, data) {
      await js.publish(PREFIX + subject, sc.encode(JSON.stringify(data)), { msgID: `interop-${subject}-${randomHex(12)}` });
    },
    async durable(subject) {
      const name = `interop-${subject.replace(":", "-")}`;
      await jsm.consumers.add(stream, {
        durable_name: name,
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        filter_subject: PREFIX + subject,
      });
      consumers.push(name);
      const consumer = await js.consumers.get(stream, name);
      return {
        async next(match, timeoutMs = 10000) {
          const deadline = Date.now() + timeoutMs;
          while (Date.now() < deadline) {
            const message = await consumer.next({ expires: 1000 });
            if (!message) continue;
            message.ack();
            const data = JSON.parse(sc.decode(message.data));
            if (match(data)) return data;
          }
          throw new Error(`no matching ${subject} within ${timeoutMs} ms`);
        },
      };
    },
    async close() {
      for (const name of consumers) await jsm.consumers.delete(stream, name);
      await nc.drain();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// NATS Streaming, with the course's classes. The tickets peer publishes ticket:created and
// ticket:updated, the payments peer payment:created; both listen to order:created and
// order:cancelled, each in its own durable queue group, as the course's services do.

// The course's nats-wrapper: connect, resolve on 'connect', reject on 'error'.
function connectAs(cluster, clientId, url) {
  const client = stan.connect(cluster, clientId, { url });
  return new Promise((resolve, reject) => {
    client.on("connect", () => resolve(client));
    client.on("error", (error) => reject(error));
  });
}

// The course's publishers (tickets/src/events/publishers, payments/src/events/publishers).
class TicketCreatedPublisher extends Publisher {
  subject = PREFIX + Subjects.TicketCreated;
}
class TicketUpdatedPublisher extends Publisher {
  subject = PREFIX + Subjects.TicketUpdated;
}
class PaymentCreatedPublisher extends Publisher {
  subject = PREFIX + Subjects.PaymentCreated;
}

// A course listener that keeps what it receives (the body as the Listener parsed it, and the
// message as node-nats-streaming handed it over) and acks it, as the course's listeners ack
// once they have handled an event.
class RecordingListener extends Listener {
  constructor(client, subject, queueGroupName) {
    super(client);
    this.subject = PREFIX + subject;
    this.queueGroupName = queueGroupName;
    this.received = new Mailbox();
  }

  onMessage(data, msg) {
    this.received.push({ data, raw: msg.getData(), bytes: msg.getRawData(), subject: msg.getSubject() });
    msg.ack();
  }
}

// Messages in arrival order; `next(match)` consumes up to the first that matches.
class Mailbox {
  #items = [];
  #cursor = 0;
  #wake = () => {};

  push(item) {
    this.#items.push(item);
    this.#wake();
  }

  async next(match, timeoutMs, what) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      while (this.#cursor < this.#items.length) {
        const item = this.#items[this.#cursor++];
        if (match(item.data)) return item;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no matching ${what} within ${timeoutMs} ms`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = () => {};
    }
  }
}

async function openStreaming(url, cluster) {
  // Client ids and queue groups unique per run: a durable group that already exists on the
  // broker resumes where it left off, and one named exactly like the course's would share the
  // messages with a real tickets or payments service listening on the same broker.
  const run = randomHex(4);
  const tickets = await connectAs(cluster, `interop-tickets-${run}`, url);
  const payments = await connectAs(cluster, `interop-payments-${run}`, url);
  const publishers = {
    [Subjects.TicketCreated]: () => new TicketCreatedPublisher(tickets),
    [Subjects.TicketUpdated]: () => new TicketUpdatedPublisher(tickets),
    [Subjects.PaymentCreated]: () => new PaymentCreatedPublisher(payments),
  };
  return {
    async publish(subject, data) {
      const publisher = publishers[subject];
      if (!publisher) throw new Error(`no Node peer publishes ${subject}`);
      await publisher().publish(data);
    },
    async durable(subject) {
      // A new durable group starts at the first message of the channel (setDeliverAllAvailable),
      // so events published before the subscription is registered still arrive.
      const listeners = [
        new RecordingListener(tickets, subject, `tickets-service-${run}`),
        new RecordingListener(payments, subject, `payments-service-${run}`),
      ];
      for (const listener of listeners) listener.listen();
      return {
        async next(match, timeoutMs = 10000) {
          const copies = await Promise.all(listeners.map((l) => l.received.next(match, timeoutMs, `${subject} (${l.queueGroupName})`)));
          for (const copy of copies) {
            assert.equal(copy.subject, PREFIX + subject);
            // The payload is the event's JSON itself: UTF-8 bytes that getData() hands over as
            // the string the Listener parses into the data object, with no envelope around it
            // (interop.mjs compares the object's fields exactly).
            assert.equal(typeof copy.raw, "string", "msg.getData() is a string");
            assert.ok(copy.bytes.equals(Buffer.from(copy.raw, "utf8")), "the payload is valid UTF-8");
            assert.match(copy.raw, /^\{/, `the payload is a bare JSON object: ${copy.raw.slice(0, 80)}`);
            assert.equal(Object.getPrototypeOf(copy.data), Object.prototype);
          }
          assert.equal(copies[1].raw, copies[0].raw, "each queue group receives the same payload");
          return copies[0].data;
        },
      };
    },
    async close() {
      for (const client of [tickets, payments]) await removeAndClose(client);
    },
  };
}

// Unsubscribes every subscription of a node-nats-streaming client, which removes the run's own
// durable groups (closing would keep them on the broker), then closes the client. subMap is
// node-nats-streaming 0.2.6's table of open subscriptions: the course's Listener.listen() does
// not return its subscription.
export async function removeAndClose(client) {
  await Promise.all(
    Object.values(client.subMap).map(
      (subscription) =>
        new Promise((resolve) => {
          for (const event of ["unsubscribed", "error", "timeout"]) subscription.once(event, resolve);
          subscription.unsubscribe();
        }),
    ),
  );
  await new Promise((resolve) => {
    client.once("close", resolve);
    client.close();
  });
}
