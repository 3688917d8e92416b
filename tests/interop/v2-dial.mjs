// v2: the official client (@x402/fetch + @x402/evm) pays Dial's own routes on x402d directly:
// POST /api/v1/sms/send and POST /api/v1/numbers/buy/us. Expect 2xx and PAYMENT-RESPONSE success.
// Env: X402D_ENV, PAYER_INDEX (0), TIMEOUT_SECONDS (60).
//
// Accommodation: the v2 client's default spend controls cap a payment at $1 on default assets
// (DEFAULT_MAX_AMOUNT_PER_PAYMENT); the US number costs $100, so the cap is raised to $150.
import { loadEnv, result, fail, deadline, run } from "./lib.mjs";
import { v2Client, payV2 } from "./v2common.mjs";

const CASES = [
  { name: "sms", path: "/api/v1/sms/send", body: { to: "+14155550123", message: "hi" } },
  { name: "number_us", path: "/api/v1/numbers/buy/us", body: {} },
];

run(async () => {
  deadline(60);
  const { env, payerIndex, account } = loadEnv();
  const client = v2Client(env, account, { spendControls: { maxAmountPerPayment: "$150" } });
  const base = env.merchant_url.replace(/\/+$/, "");
  const results = {};
  const problems = [];
  for (const c of CASES) {
    const out = await payV2(client, base + c.path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(c.body),
    });
    results[c.name] = { path: c.path, request: c.body, ...out };
    process.stderr.write(`${c.name}: ${JSON.stringify(results[c.name])}\n`);
    if (out.status < 200 || out.status > 299) problems.push(`${c.path}: expected 2xx, got ${out.status}`);
    else if (!out.paymentResponse) problems.push(`${c.path}: no PAYMENT-RESPONSE header`);
    else if (out.paymentResponse.success !== true) problems.push(`${c.path}: PAYMENT-RESPONSE success is not true`);
  }
  const report = { case: "v2-dial", payer: account.address, payerIndex, results };
  if (problems.length) fail(problems.join("; "), report);
  result({ ok: true, ...report });
});
