// The official x402 v2 pieces used by several scripts: an express resource server protected by
// @x402/express against x402d as facilitator, and the @x402/fetch + @x402/evm paying client.
import express from "express";
import { paymentMiddleware, x402ResourceServer } from "@x402/express";
import { HTTPFacilitatorClient } from "@x402/core/server";
import { ExactEvmScheme as ExactEvmServerScheme } from "@x402/evm/exact/server";
import { ExactEvmScheme as ExactEvmClientScheme } from "@x402/evm/exact/client";
import { x402Client } from "@x402/core/client";
import { wrapFetchWithPayment, decodePaymentResponseHeader } from "@x402/fetch";
import { decodeB64Json, readBody } from "./lib.mjs";

/**
 * Starts an express app on an ephemeral 127.0.0.1 port with one paid route, GET /paid,
 * priced `price` (default "$0.01", i.e. USDC on env.network by the SDK's default-asset table),
 * paid to env.pay_to, verified and settled by x402d at env.facilitator_url.
 */
export async function startV2Express(env, { price = "$0.01", facilitatorTimeoutMs } = {}) {
  const facilitator = new HTTPFacilitatorClient({
    url: env.facilitator_url,
    ...(facilitatorTimeoutMs ? { timeoutMs: facilitatorTimeoutMs } : {}),
  });
  const resourceServer = new x402ResourceServer(facilitator).register(env.network, new ExactEvmServerScheme());
  const app = express();
  app.use(
    paymentMiddleware(
      {
        "GET /paid": {
          accepts: {
            scheme: "exact",
            price,
            network: env.network,
            payTo: env.pay_to,
            maxTimeoutSeconds: 120,
          },
          description: "x402d interop test resource",
          mimeType: "application/json",
        },
      },
      resourceServer,
    ),
  );
  app.get("/paid", (_req, res) => res.json({ paid: true, at: new Date().toISOString() }));
  const server = await new Promise((resolve, reject) => {
    const s = app.listen(0, "127.0.0.1", () => resolve(s));
    s.on("error", reject);
  });
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}/paid`,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}

/**
 * The official v2 client: x402Client with @x402/evm's exact scheme registered for env.network,
 * signing with the viem account. `spendControls` is passed through (the SDK's default caps a
 * payment at $1 on default assets, so Dial's $100 number needs a higher cap).
 */
export function v2Client(env, account, { spendControls } = {}) {
  const client = new x402Client();
  client.register(env.network, new ExactEvmClientScheme(account));
  if (spendControls !== undefined) client.setSpendControls(spendControls);
  return client;
}

/** Pays `url` with the v2 fetch wrapper and returns what was observed. */
export async function payV2(client, url, init = {}) {
  const fetchWithPayment = wrapFetchWithPayment(globalThis.fetch, client);
  const res = await fetchWithPayment(url, init);
  const header = res.headers.get("PAYMENT-RESPONSE");
  let paymentResponse = null;
  if (header) {
    try {
      paymentResponse = decodePaymentResponseHeader(header);
    } catch (e) {
      paymentResponse = { sdkDecodeError: String(e), raw: decodeB64Json(header) };
    }
  }
  const paymentRequired = res.status === 402 ? decodeB64Json(res.headers.get("PAYMENT-REQUIRED")) : undefined;
  const body = await readBody(res);
  return {
    status: res.status,
    paymentResponse,
    transaction: paymentResponse?.transaction ?? null,
    body,
    ...(paymentRequired ? { paymentRequired } : {}),
  };
}
