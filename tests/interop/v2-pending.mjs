// v2 settlement_pending: like v2-express, but run while anvil's automine is off (the driver pauses
// mining before starting this script and resumes it a few seconds later). The official resource
// server (@x402/core x402ResourceServer.settleWithPendingRetry) calls /settle again, once, when the
// first answer is success=false, errorReason "settlement_pending" with a transaction hash.
// The script reports the HTTP status, PAYMENT-RESPONSE and every facilitator call it saw (timed).
// Env: X402D_ENV, PAYER_INDEX (0), PRICE ("$0.01"), TIMEOUT_SECONDS (90).
//   EXPECT ("success" default | "any"): with "any" the script exits 0 whatever the outcome, only
//     reporting it (for exploring); with "success" it needs 200 + PAYMENT-RESPONSE success.
//   DRIVE_MINING_MS (unset): for running by hand only — the script itself turns automine off
//     before paying and back on (plus evm_mine) after this many ms.
import { loadEnv, result, fail, deadline, run, logFacilitatorTraffic, observed } from "./lib.mjs";
import { startV2Express, v2Client, payV2 } from "./v2common.mjs";

async function rpc(url, method, params = []) {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }),
    signal: AbortSignal.timeout(10_000),
  });
  const j = await res.json();
  if (j.error) throw new Error(`${method}: ${JSON.stringify(j.error)}`);
  return j.result;
}

run(async () => {
  deadline(90);
  const t0 = Date.now();
  const { env, payerIndex, account } = loadEnv();
  logFacilitatorTraffic(env.facilitator_url);
  const app = await startV2Express(env, { price: process.env.PRICE ?? "$0.01", facilitatorTimeoutMs: 80_000 });
  const driveMs = process.env.DRIVE_MINING_MS ? Number(process.env.DRIVE_MINING_MS) : null;
  let resumed = null;
  if (driveMs !== null) {
    await rpc(env.rpc_url, "evm_setAutomine", [false]);
    process.stderr.write(`[mining] automine off; resuming in ${driveMs}ms\n`);
    resumed = new Promise((resolve) =>
      setTimeout(async () => {
        try {
          await rpc(env.rpc_url, "evm_setAutomine", [true]);
          await rpc(env.rpc_url, "evm_mine", []);
          process.stderr.write(`[mining] automine on + evm_mine at ${Date.now() - t0}ms\n`);
        } catch (e) {
          process.stderr.write(`[mining] resume failed: ${e}\n`);
        }
        resolve();
      }, driveMs),
    );
  }
  let out;
  try {
    out = await payV2(v2Client(env, account), app.url);
  } finally {
    await app.close();
    if (resumed) await resumed;
  }
  const calls = observed().facilitatorCalls;
  const settles = calls.filter((c) => c.op === "settle");
  const report = {
    case: "v2-pending",
    payer: account.address,
    payerIndex,
    url: app.url,
    elapsedMs: Date.now() - t0,
    ...out,
    settleCalls: settles.length,
    firstSettle: settles[0]?.response ?? null,
    sdkRetriedSettle: settles.length > 1,
    facilitatorCalls: calls,
  };
  if ((process.env.EXPECT ?? "success") === "any") return result({ ok: true, ...report });
  if (out.status !== 200) fail(`expected HTTP 200, got ${out.status}`, report);
  if (!out.paymentResponse) fail("no PAYMENT-RESPONSE header on the 200", report);
  if (out.paymentResponse.success !== true) fail("PAYMENT-RESPONSE success is not true", report);
  result({ ok: true, ...report });
});
