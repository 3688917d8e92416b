// v2: an express app protected by @x402/express (facilitator = x402d) is paid by @x402/fetch +
// @x402/evm. Expect 200 and a PAYMENT-RESPONSE whose success is true.
// Env: X402D_ENV, PAYER_INDEX (0), PRICE ("$0.01"), TIMEOUT_SECONDS (60).
import { loadEnv, result, fail, deadline, run, logFacilitatorTraffic, observed } from "./lib.mjs";
import { startV2Express, v2Client, payV2 } from "./v2common.mjs";

run(async () => {
  deadline(60);
  const { env, payerIndex, account } = loadEnv();
  logFacilitatorTraffic(env.facilitator_url);
  const app = await startV2Express(env, { price: process.env.PRICE ?? "$0.01", facilitatorTimeoutMs: 45_000 });
  let out;
  try {
    out = await payV2(v2Client(env, account), app.url);
  } finally {
    await app.close();
  }
  const report = { case: "v2-express", payer: account.address, payerIndex, url: app.url, ...out, ...observed() };
  if (out.status !== 200) fail(`expected HTTP 200, got ${out.status}`, report);
  if (!out.paymentResponse) fail("no PAYMENT-RESPONSE header on the 200", report);
  if (out.paymentResponse.success !== true) fail("PAYMENT-RESPONSE success is not true", report);
  result({ ok: true, ...report });
});
