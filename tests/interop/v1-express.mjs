// v1 (legacy SDK): an express app protected by x402-express's paymentMiddleware (facilitator =
// x402d, network "base-sepolia") is paid by x402-fetch. Expect 200 and X-PAYMENT-RESPONSE success.
// Env: X402D_ENV, PAYER_INDEX (0), PRICE ("$0.01"), TIMEOUT_SECONDS (60).
//
// The signer is a viem wallet client on baseSepolia built like x402's createSigner("base-sepolia"),
// but with its transport pointed at the dev chain's rpc_url instead of the public Base Sepolia RPC
// (signing EIP-3009 typed data is local; the RPC is never needed for this flow).
import express from "express";
import { paymentMiddleware } from "x402-express";
import { wrapFetchWithPayment, decodeXPaymentResponse } from "x402-fetch";
import { createWalletClient, http, publicActions } from "viem";
import { baseSepolia } from "viem/chains";
import { loadEnv, result, fail, deadline, run, logFacilitatorTraffic, observed, decodeB64Json, readBody } from "./lib.mjs";

const V1_NETWORK = "base-sepolia";

run(async () => {
  deadline(60);
  const { env, payerIndex, account } = loadEnv();
  if (env.chain_id !== undefined && env.chain_id !== baseSepolia.id) {
    fail(`v1 case needs the Base Sepolia chain id ${baseSepolia.id}, env has ${env.chain_id}`);
  }
  logFacilitatorTraffic(env.facilitator_url);

  const app = express();
  app.use(
    paymentMiddleware(
      env.pay_to,
      {
        "GET /paid": {
          price: process.env.PRICE ?? "$0.01",
          network: V1_NETWORK,
          config: { description: "x402d interop test resource (v1)", mimeType: "application/json", maxTimeoutSeconds: 120 },
        },
      },
      { url: env.facilitator_url.replace(/\/+$/, "") },
    ),
  );
  app.get("/paid", (_req, res) => res.json({ paid: true, at: new Date().toISOString() }));
  const server = await new Promise((resolve, reject) => {
    const s = app.listen(0, "127.0.0.1", () => resolve(s));
    s.on("error", reject);
  });
  const url = `http://127.0.0.1:${server.address().port}/paid`;

  const wallet = createWalletClient({ chain: baseSepolia, transport: http(env.rpc_url), account }).extend(publicActions);
  const fetchWithPay = wrapFetchWithPayment(globalThis.fetch, wallet);
  let status, paymentResponse = null, body, requirements;
  try {
    const res = await fetchWithPay(url, { method: "GET" });
    status = res.status;
    const header = res.headers.get("X-PAYMENT-RESPONSE");
    if (header) {
      try {
        paymentResponse = decodeXPaymentResponse(header);
      } catch (e) {
        paymentResponse = { sdkDecodeError: String(e), raw: decodeB64Json(header) };
      }
    }
    body = await readBody(res);
    if (status === 402) requirements = body?.accepts;
  } finally {
    server.closeAllConnections?.();
    server.close();
  }
  const report = {
    case: "v1-express",
    payer: account.address,
    payerIndex,
    url,
    status,
    paymentResponse,
    transaction: paymentResponse?.transaction ?? null,
    body,
    ...(requirements ? { requirements } : {}),
    ...observed(),
  };
  if (status !== 200) fail(`expected HTTP 200, got ${status}`, report);
  if (!paymentResponse) fail("no X-PAYMENT-RESPONSE header on the 200", report);
  if (paymentResponse.success !== true) fail("X-PAYMENT-RESPONSE success is not true", report);
  result({ ok: true, ...report });
});
