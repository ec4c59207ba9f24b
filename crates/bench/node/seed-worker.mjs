// The seed worker: the course's Node expiration service, reconstructed in plain JavaScript so
// that the Rust `expiration` worker can be measured against it (lateness.mjs measures either).
// It does what the course's service does, with the course's libraries and defaults:
// `@sgtickets/common` 1.0.24's Listener/Publisher over `node-nats-streaming` 0.2.6, Bull 4 on Redis.
//
//   order:created  (durable queue group `expiration-service`, as every course Listener: deliver
//                  all available, manual ack, ack wait 5 s, max in flight 16384)
//     -> Bull job {orderId} on queue `order:expiration`, delay = expiresAt - now, then ack
//   Bull job due (queue.process, concurrency 1, the course's handler)
//     -> publish expiration:complete {orderId} (the handler does not await the publish, as in
//        the course, so the job completes whether or not the broker acknowledged it)
//
// Run (npm ci first):
//   NATS_URL=nats://127.0.0.1:24223 NATS_CLUSTER_ID=ticketing NATS_CLIENT_ID=seed-1 \
//   REDIS_HOST=127.0.0.1 REDIS_PORT=26379 node seed-worker.mjs > seed.log
// Environment: NATS_URL, NATS_CLUSTER_ID, NATS_CLIENT_ID, REDIS_HOST as in the course's
// manifests; REDIS_PORT (6379 when unset) and NATS_SUBJECT_PREFIX (prepended to the subjects,
// empty when unset) are additions for test brokers. The queue lives in Redis under Bull's
// default keys `bull:order:expiration:*`, completed jobs are kept (the course sets no
// removeOnComplete): give it a Redis of its own, or FLUSHDB between runs. SIGINT/SIGTERM close
// the NATS Streaming connection; the process exits when it is closed, as the course's does.
// Like the course's, it logs a line per event received, job scheduled and event published.
//
// The sections below are the course's files (expiration/src/...), in the order a reader meets them.

import Queue from "bull";
import nats from "node-nats-streaming";
import common from "@sgtickets/common";

const { Listener, Publisher, Subjects } = common;
const PREFIX = process.env.NATS_SUBJECT_PREFIX ?? "";

// --- nats-wrapper.ts --------------------------------------------------------------------------
class NatsWrapper {
  #client;

  get client() {
    if (!this.#client) throw new Error("Cannot access NATS client before connecting");
    return this.#client;
  }

  connect(clusterId, clientId, url) {
    this.#client = nats.connect(clusterId, clientId, { url });
    return new Promise((resolve, reject) => {
      this.client.on("connect", () => {
        console.log("Connected to NATS");
        resolve();
      });
      this.client.on("error", (err) => reject(err));
    });
  }
}
const natsWrapper = new NatsWrapper();

// --- events/publishers/expiration-complete-publisher.ts ---------------------------------------
class ExpirationCompletePublisher extends Publisher {
  subject = PREFIX + Subjects.ExpirationComplete;
}

// --- queues/expiration-queue.ts ---------------------------------------------------------------
const redis = { host: process.env.REDIS_HOST };
if (process.env.REDIS_PORT) redis.port = Number(process.env.REDIS_PORT);
const expirationQueue = new Queue("order:expiration", { redis });

expirationQueue.process(async (job) => {
  new ExpirationCompletePublisher(natsWrapper.client).publish({ orderId: job.data.orderId });
});

// --- events/listeners/queue-group-name.ts -----------------------------------------------------
const queueGroupName = "expiration-service";

// --- events/listeners/order-created-listener.ts -----------------------------------------------
class OrderCreatedListener extends Listener {
  subject = PREFIX + Subjects.OrderCreated;
  queueGroupName = queueGroupName;

  async onMessage(data, msg) {
    const delay = new Date(data.expiresAt).getTime() - new Date().getTime();
    console.log("Waiting this many milliseconds to process the job:", delay);
    await expirationQueue.add({ orderId: data.id }, { delay });
    msg.ack();
  }
}

// --- index.ts ---------------------------------------------------------------------------------
const start = async () => {
  if (!process.env.NATS_CLIENT_ID) throw new Error("NATS_CLIENT_ID must be defined");
  if (!process.env.NATS_URL) throw new Error("NATS_URL must be defined");
  if (!process.env.NATS_CLUSTER_ID) throw new Error("NATS_CLUSTER_ID must be defined");

  try {
    await natsWrapper.connect(process.env.NATS_CLUSTER_ID, process.env.NATS_CLIENT_ID, process.env.NATS_URL);
    natsWrapper.client.on("close", () => {
      console.log("NATS connection closed!");
      process.exit();
    });
    process.on("SIGINT", () => natsWrapper.client.close());
    process.on("SIGTERM", () => natsWrapper.client.close());

    new OrderCreatedListener(natsWrapper.client).listen();
  } catch (err) {
    console.error(err);
  }
};

start();
