// Bull 4.16.5 measured the way `expiration-bench` measures our queue at scope `queue`
// (crates/bench/src/bin/expiration-bench.rs): the queue and its processor in this process, a
// processor that does nothing but record when it ran, one JSON line per run on stdout with the
// same keys as expiration-bench's report (`scope` is "bull"), so the two can be compared field
// by field (scripts/bench-expiration does).
//
//   node bull-queue.mjs burst  [--jobs N] [--concurrency C] [--batch B] [--redis-url URL]
//   node bull-queue.mjs steady [--rate R] [--seconds S] [--concurrency C] [--batch B] [--redis-url URL]
//
// burst   N jobs (default 20000) all due at one moment, 1000 + N/50 ms after the start (as
//         expiration-bench's queue scope). Jobs are added with `queue.addBulk` in chunks of
//         --batch jobs (default 1000, our queue's batch), 8 chunks in flight (as ours): each chunk
//         is one MULTI of Bull's addJob script on Bull's command connection.
//         add_per_s   = N / (time from the first add until every addBulk has answered);
//                       adds_overran_due: true when that took longer than the lead time
//         drain_per_s = N / (time the last job completed - due time); "completed" is Bull's own
//                       local `completed` event, i.e. moveToFinished has removed the job
//         late_*_ms   = time the processor ran - due time (p50, p99, max)
// steady  R jobs a second (default 1000) for S seconds (default 10), each due 1 s after it was
//         added: every millisecond, the jobs owed so far are added (one addBulk), awaited, as
//         expiration-bench does. drain_per_s = jobs / (last run - start - 1 s).
//
// Bull runs with its defaults (what the course's service and any Bull user gets): guardInterval
// 5000 ms, stalledInterval 30000 ms, lockDuration 30000 ms, drainDelay 5 s, prefix `bull`. The
// one job option set is removeOnComplete: true, so finished jobs are deleted at once and leave
// nothing in Redis to slow later runs (our queue deletes a job when it completes too). Each job's
// timestamp and delay are set so that timestamp + delay is exactly its due time in whole ms, the
// same due time our queue gets; its data is {orderId, due}.
//
// Times are wall-clock with microsecond resolution (Date.now() calibrated against
// performance.now()), as expiration-bench uses chrono::Utc::now(). rss_mb is this process'
// peak resident set (VmHWM). The queue is named `bench-bull-<pid>-<ms>`; at the end (and on
// SIGINT/SIGTERM) it is closed and every key `bull:<name>:*` deleted.
//
// Exit codes: 0; 1 when Redis cannot be reached, a job failed or not every job ran in time;
// 2 on bad arguments.

import { parseArgs } from "node:util";
import { performance } from "node:perf_hooks";
import { readFileSync } from "node:fs";
import Queue from "bull";

const NAME = "bull-queue";
const usage = `usage: node bull-queue.mjs burst [--jobs N] [--concurrency C] [--batch B] [--redis-url URL]
       node bull-queue.mjs steady [--rate R] [--seconds S] [--concurrency C] [--batch B] [--redis-url URL]

Bull 4 measured as expiration-bench measures our queue (scope queue); one JSON line on stdout.

  burst    N jobs all due at one moment 1000 + N/50 ms ahead: add rate, drain rate, lateness
  steady   R jobs a second for S seconds, each due 1 s after it was added: lateness

  --jobs N          burst: how many jobs [20000]
  --rate R          steady: jobs added per second [1000]
  --seconds S       steady: how long to add jobs [10]
  --concurrency C   Bull processor concurrency (jobs run at once) [50]
  --batch B         jobs per addBulk call (8 calls in flight) [1000]
  --redis-url URL   Redis to use [$REDIS_URL or redis://127.0.0.1:16379]
  -h, --help        this text`;

function fail(message, code) {
  console.error(`${NAME}: ${message}`);
  process.exit(code);
}

function positive(flag, text) {
  if (!/^[1-9][0-9]*$/.test(text)) fail(`--${flag} \`${text}\` is invalid: expected a whole number, at least 1`, 2);
  return Number(text);
}

let parsed;
try {
  parsed = parseArgs({
    allowPositionals: true,
    options: {
      jobs: { type: "string", default: "20000" },
      rate: { type: "string", default: "1000" },
      seconds: { type: "string", default: "10" },
      concurrency: { type: "string", default: "50" },
      batch: { type: "string", default: "1000" },
      "redis-url": { type: "string", default: process.env.REDIS_URL || "redis://127.0.0.1:16379" },
      help: { type: "boolean", short: "h" },
    },
  });
} catch (err) {
  fail(`${err.message}\n${usage}`, 2);
}
if (parsed.values.help) {
  console.log(usage);
  process.exit(0);
}
const mode = parsed.positionals[0];
if (parsed.positionals.length !== 1 || !["burst", "steady"].includes(mode)) {
  fail(`expected one mode, burst or steady\n${usage}`, 2);
}
const args = {
  mode,
  jobs: positive("jobs", parsed.values.jobs),
  rate: positive("rate", parsed.values.rate),
  seconds: positive("seconds", parsed.values.seconds),
  concurrency: positive("concurrency", parsed.values.concurrency),
  batch: positive("batch", parsed.values.batch),
  redisUrl: parsed.values["redis-url"],
};
if (!/^rediss?:\/\//.test(args.redisUrl)) fail(`--redis-url \`${args.redisUrl}\` is invalid: expected redis://HOST:PORT`, 2);

// Wall clock in ms with microsecond resolution: Date.now() at the moment it ticked, carried
// forward by the monotonic clock. A sample taken while this process was preempted comes out
// smaller than the truth, never larger: take the largest of a few.
const wallOffset = (() => {
  let best = -Infinity;
  for (let i = 0; i < 5; i++) {
    const first = Date.now();
    let now;
    while ((now = Date.now()) === first);
    best = Math.max(best, now - performance.now());
  }
  return best;
})();
const wallMs = () => wallOffset + performance.now();

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
/// `promise`, or an error `message` if it has not settled within `ms`.
function within(promise, ms, message) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const IN_FLIGHT = 8;

/// Lateness of each job the processor ran, and when the last one ran and completed.
const record = {
  fired: 0,
  late: [],
  lastFire: 0,
  completed: 0,
  lastCompleted: 0,
  failed: [],
};

const queueName = `bench-bull-${process.pid}-${Date.now()}`;
const queue = new Queue(queueName, args.redisUrl, {
  defaultJobOptions: { removeOnComplete: true },
});
// One connection of our own, kept past queue.close() to delete the queue's keys.
const cleaner = queue.client.duplicate();
cleaner.on("error", () => {}); // Bull's own connections report errors through queue.on("error")

let cleaning;
async function clean() {
  cleaning ??= (async () => {
    await queue.close().catch(() => {});
    let cursor = "0";
    do {
      const [next, keys] = await cleaner.scan(cursor, "MATCH", `bull:${queueName}:*`, "COUNT", 1000);
      cursor = next;
      if (keys.length) await cleaner.del(...keys);
    } while (cursor !== "0");
    await cleaner.quit();
  })().catch((err) => console.error(`${NAME}: could not delete the queue's keys: ${err.message}`));
  // Bounded: with Redis gone, Bull's close() would wait for it forever.
  return Promise.race([cleaning, sleep(5000)]);
}

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => clean().finally(() => process.exit(signal === "SIGINT" ? 130 : 143)));
}

queue.on("error", (err) => console.error(`${NAME}: bull: ${err.message}`));
queue.on("completed", () => {
  record.completed += 1;
  record.lastCompleted = wallMs();
});
queue.on("failed", (job, err) => record.failed.push(`${job.id}: ${err.message}`));

/// Adds jobs first..first+count, each due at due(n) (whole ms since the epoch).
async function add(first, count, due) {
  const chunks = [];
  for (let start = first; start < first + count; start += args.batch) {
    chunks.push([start, Math.min(start + args.batch, first + count)]);
  }
  let next = 0;
  const lane = async () => {
    while (next < chunks.length) {
      const [from, to] = chunks[next++];
      const timestamp = Date.now();
      const jobs = [];
      for (let n = from; n < to; n++) {
        const d = due(n);
        jobs.push({
          data: { orderId: n.toString(16).padStart(24, "0"), due: d },
          // The delayed set's score is timestamp + delay: exactly the due time.
          opts: { timestamp, delay: d - timestamp },
        });
      }
      await queue.addBulk(jobs);
    }
  };
  await Promise.all(Array.from({ length: Math.min(IN_FLIGHT, chunks.length) }, lane));
}

async function waitFor(what, count, deadlineMs) {
  const start = performance.now();
  while (record[what] < count) {
    if (record.failed.length) throw new Error(`${record.failed.length} job(s) failed, e.g. ${record.failed[0]}`);
    if (performance.now() - start > deadlineMs) {
      throw new Error(`only ${record[what]} of ${count} jobs ${what} within ${Math.round(deadlineMs)} ms`);
    }
    await sleep(1);
  }
}

async function burst() {
  const jobs = args.jobs;
  const leadMs = 1000 + Math.floor(jobs / 50);
  const due = Date.now() + leadMs;
  const start = performance.now();
  await add(0, jobs, () => due);
  const addSecs = (performance.now() - start) / 1000;
  const addsOverranDue = Date.now() >= due;
  await waitFor("completed", jobs, leadMs + 120_000);
  const drainSecs = Math.max((record.lastCompleted - due) / 1000, 1e-6);
  return { jobs, add_per_s: jobs / addSecs, drain_per_s: jobs / drainSecs, adds_overran_due: addsOverranDue };
}

async function steady() {
  const total = args.rate * args.seconds;
  const start = performance.now();
  const startWall = wallMs();
  let added = 0;
  while (added < total) {
    await sleep(1);
    const should = Math.min(Math.floor(((performance.now() - start) / 1000) * args.rate), total);
    if (should > added) {
      const due = Date.now() + 1000;
      await add(added, should - added, () => due);
      added = should;
    }
  }
  const addSecs = (performance.now() - start) / 1000;
  await waitFor("fired", total, 60_000);
  const drainSecs = record.lastFire ? (record.lastFire - startWall) / 1000 - 1 : addSecs;
  return { jobs: total, add_per_s: total / addSecs, drain_per_s: total / Math.max(drainSecs, 1e-6), adds_overran_due: false };
}

const round2 = (x) => Math.round(x * 100) / 100;

function peakRssMb() {
  try {
    const line = readFileSync("/proc/self/status", "utf8").split("\n").find((l) => l.startsWith("VmHWM:"));
    return Number(line.split(/\s+/)[1]) / 1024;
  } catch {
    return process.resourceUsage().maxRSS / 1024;
  }
}

/// The report: expiration-bench's keys, in the order it prints them, and its quantile rule.
function json(result) {
  const late = [...record.late].sort((a, b) => a - b);
  const pick = (q) => {
    if (!late.length) return 0;
    const index = Math.min(Math.max(Math.ceil(late.length * q), 1), late.length) - 1;
    return round2(late[index]);
  };
  const line = {
    mode: args.mode,
    scope: "bull",
    jobs: result.jobs,
    concurrency: args.concurrency,
    add_per_s: Math.round(result.add_per_s),
    drain_per_s: Math.round(result.drain_per_s),
    late_p50_ms: pick(0.5),
    late_p99_ms: pick(0.99),
    late_max_ms: pick(1),
    rss_mb: round2(peakRssMb()),
  };
  if (args.mode === "steady") {
    line.rate = args.rate;
    line.seconds = args.seconds;
  }
  if (result.adds_overran_due) line.adds_overran_due = true;
  return JSON.stringify(line);
}

async function main() {
  // Redis must answer before anything is timed (Bull's isReady() does not wait for it).
  await within(queue.client.ping(), 5000, `cannot reach Redis at ${args.redisUrl}`);
  queue.process(args.concurrency, async (job) => {
    const now = wallMs();
    record.late.push(now - job.data.due);
    record.lastFire = now;
    record.fired += 1;
  }).catch((err) => console.error(`${NAME}: bull stopped processing: ${err.message}`));
  // queue.process() resolves only when the queue closes. Before timing, wait until the queue
  // has subscribed to its `delayed` channel and armed its delay timer (Bull's own
  // _initializingProcess, pinned version 4.16.5): a job added before that would be promoted
  // only by the guard timer, up to 5 s late.
  await within(queue._initializingProcess, 5000, "Bull did not subscribe to its delayed channel within 5 s");
  const result = args.mode === "burst" ? await burst() : await steady();
  // Bull promotes a job once Date.now() has reached its due time; a run more than a clock
  // sample's error early would mean the clock above is wrong.
  const early = record.late.filter((late) => late < -0.5).length;
  if (early) console.error(`${NAME}: warning: ${early} job(s) ran more than 0.5 ms before their due time`);
  const counts = await queue.getJobCounts();
  const left = counts.waiting + counts.active + counts.delayed + counts.failed;
  if (args.mode === "burst" && left) throw new Error(`the queue still holds ${left} jobs after the last completed`);
  return json(result);
}

let code = 0;
try {
  console.log(await main());
} catch (err) {
  console.error(`${NAME}: ${err.message}`);
  code = 1;
}
await clean();
process.exit(code);
