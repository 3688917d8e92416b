// Shared helpers for the interop scripts: env loading, the RESULT line, a hard deadline,
// and a logger for the facilitator HTTP traffic of an in-process resource server.
import { readFileSync } from "node:fs";
import { privateKeyToAccount } from "viem/accounts";

/** Loads the `x402d dev --env-out` JSON named by X402D_ENV and the payer picked by PAYER_INDEX. */
export function loadEnv() {
  const path = process.env.X402D_ENV;
  if (!path) fail("X402D_ENV is not set (path to the x402d dev env JSON)");
  let env;
  try {
    env = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    fail(`cannot read X402D_ENV=${path}: ${e.message}`);
  }
  for (const k of ["network", "usdc", "facilitator_url", "merchant_url", "pay_to", "payer_keys"]) {
    if (env[k] === undefined || env[k] === null) fail(`env JSON ${path} has no field ${k}`);
  }
  const index = Number.parseInt(process.env.PAYER_INDEX ?? "0", 10);
  if (!Number.isInteger(index) || index < 0 || index >= env.payer_keys.length) {
    fail(`PAYER_INDEX=${process.env.PAYER_INDEX} is out of range (0..${env.payer_keys.length - 1})`);
  }
  const payerKey = env.payer_keys[index];
  const account = privateKeyToAccount(payerKey);
  return { env, payerIndex: index, payerKey, account };
}

let done = false;

/** Prints the one `RESULT {json}` line and exits with `code`. */
export function result(obj, code = 0) {
  if (done) return;
  done = true;
  const json = JSON.stringify(obj, (_, v) => (typeof v === "bigint" ? v.toString() : v));
  process.stdout.write(`RESULT ${json}\n`, () => process.exit(code));
}

/** Reports a failure: a RESULT line with ok=false and the message, exit code 1. */
export function fail(message, extra = {}) {
  process.stderr.write(`FAIL: ${message}\n`);
  result({ ok: false, error: message, ...extra }, 1);
  // result() exits once stdout is flushed; keep the caller from going on meanwhile.
  throw new FailSignal(message);
}

class FailSignal extends Error {}

/** Kills the process with a clear message after `seconds` (default TIMEOUT_SECONDS or 60). */
export function deadline(seconds) {
  const s = Number(process.env.TIMEOUT_SECONDS ?? seconds ?? 60);
  const t = setTimeout(() => {
    process.stderr.write(`FAIL: timed out after ${s}s\n`);
    result({ ok: false, error: `timed out after ${s}s`, observed: observed() }, 2);
  }, s * 1000);
  t.unref();
  return t;
}

/** Runs `main`, turning a thrown error into a failure RESULT. */
export function run(main) {
  main().catch((e) => {
    if (e instanceof FailSignal) return;
    const message = e?.stack ?? String(e);
    process.stderr.write(`FAIL: ${message}\n`);
    result({ ok: false, error: String(e?.message ?? e), observed: observed() }, 1);
  });
}

const facilitatorLog = [];

/** What the facilitator logger has seen so far (for failure reports). */
export function observed() {
  return { facilitatorCalls: facilitatorLog };
}

/**
 * Wraps globalThis.fetch so that every request to `facilitatorUrl` + /verify, /settle or /supported
 * (as made by HTTPFacilitatorClient or x402 v1's useFacilitator, which both call the global fetch)
 * is logged to stderr with its request body and the response status and body, and recorded.
 */
export function logFacilitatorTraffic(facilitatorUrl) {
  const base = facilitatorUrl.replace(/\/+$/, "");
  const inner = globalThis.fetch;
  globalThis.fetch = async (input, init) => {
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
    const m = url.startsWith(base) ? url.slice(base.length).match(/^\/(verify|settle|supported)\b/) : null;
    if (!m) return inner(input, init);
    const started = Date.now();
    let reqBody;
    try {
      reqBody = init?.body ? JSON.parse(init.body) : undefined;
    } catch {
      reqBody = init?.body;
    }
    process.stderr.write(`[facilitator] -> ${init?.method ?? "GET"} ${url}${reqBody ? " " + JSON.stringify(reqBody) : ""}\n`);
    let res;
    try {
      res = await inner(input, init);
    } catch (e) {
      process.stderr.write(`[facilitator] <- ${m[1]} error after ${Date.now() - started}ms: ${e}\n`);
      facilitatorLog.push({ op: m[1], error: String(e), ms: Date.now() - started });
      throw e;
    }
    const text = await res.clone().text();
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
    const ms = Date.now() - started;
    process.stderr.write(`[facilitator] <- ${m[1]} ${res.status} in ${ms}ms ${text}\n`);
    if (m[1] !== "supported") facilitatorLog.push({ op: m[1], status: res.status, ms, response: body });
    return res;
  };
  return facilitatorLog;
}

/** Decodes a base64 JSON header (PAYMENT-RESPONSE, X-PAYMENT-RESPONSE, PAYMENT-REQUIRED). */
export function decodeB64Json(value) {
  if (!value) return null;
  try {
    return JSON.parse(Buffer.from(value, "base64").toString("utf8"));
  } catch (e) {
    return { undecodable: value, error: String(e) };
  }
}

/** Reads a response body as JSON if it is JSON, else as text. */
export async function readBody(res) {
  const text = await res.text();
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** A fetch with a per-request timeout (the SDK wrappers pass init through). */
export function timedFetch(ms) {
  return (input, init = {}) => globalThis.fetch(input, { ...init, signal: init.signal ?? AbortSignal.timeout(ms) });
}
