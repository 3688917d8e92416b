// MCP: an @modelcontextprotocol/sdk client (StreamableHTTPClientTransport) against Dial's
// {merchant_url}/mcp, paying a tool call the x402 MCP way:
//   1. tools/list has send_sms, buy_number, buy_number_us, buy_number_intl, esim_checkout,
//      start_verification, discovery;
//   2. send_sms without payment -> isError true, structuredContent = x402 PaymentRequired
//      (x402Version 2, accepts[]) and the same object as JSON text in content[0].text;
//   3. the PaymentPayload for accepts[0] built by @x402/core's x402Client + @x402/evm's exact scheme
//      (an object, not base64), sent as params._meta["x402/payment"] -> isError false/absent and
//      result._meta["x402/payment-response"] with success true and a transaction hash;
//   4. send_sms to "not-a-phone" -> isError true and no PaymentRequired (a validation error).
// No official x402 MCP helper is published on npm (@x402/mcp answers 404; nothing in
// @x402/* 2.27.0 mentions "x402/payment"), so the _meta plumbing is done here by hand.
// Env: X402D_ENV, PAYER_INDEX (0), MCP_URL ({merchant_url}/mcp), TIMEOUT_SECONDS (60).
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CallToolResultSchema } from "@modelcontextprotocol/sdk/types.js";
import { x402Client } from "@x402/core/client";
import { ExactEvmScheme } from "@x402/evm/exact/client";
import { loadEnv, result, fail, deadline, run } from "./lib.mjs";

const EXPECTED_TOOLS = [
  "send_sms",
  "buy_number",
  "buy_number_us",
  "buy_number_intl",
  "esim_checkout",
  "start_verification",
  "discovery",
];
const REQ = { timeout: 30_000 };

function isPaymentRequired(x) {
  return !!x && typeof x === "object" && x.x402Version === 2 && Array.isArray(x.accepts);
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

run(async () => {
  deadline(60);
  const { env, payerIndex, account } = loadEnv();
  const mcpUrl = process.env.MCP_URL ?? `${env.merchant_url.replace(/\/+$/, "")}/mcp`;
  const report = { case: "mcp-dial", payer: account.address, payerIndex, mcpUrl, notes: [] };
  const problems = [];

  const client = new Client({ name: "x402d-interop", version: "0.0.0" });
  const transport = new StreamableHTTPClientTransport(new URL(mcpUrl));
  try {
    await client.connect(transport, REQ);
  } catch (e) {
    fail(`MCP connect/initialize to ${mcpUrl} failed: ${e?.message ?? e}`, { ...report, code: e?.code });
  }
  report.server = client.getServerVersion();

  // Calls a tool the official way (client.callTool, which validates structuredContent against the
  // tool's outputSchema even on isError results); if the SDK rejects the result on that ground,
  // records it as a problem and re-sends without validation so the remaining checks can still run.
  async function callTool(label, params) {
    try {
      return await client.callTool(params, CallToolResultSchema, REQ);
    } catch (e) {
      const msg = String(e?.message ?? e);
      if (/output schema|structured content/i.test(msg)) {
        problems.push(`${label}: the MCP SDK client rejected the tool result: ${msg}`);
        return await client.request({ method: "tools/call", params }, CallToolResultSchema, REQ);
      }
      throw e;
    }
  }

  try {
    // 1. tools/list
    const { tools } = await client.listTools(undefined, REQ);
    report.tools = tools.map((t) => t.name);
    const missing = EXPECTED_TOOLS.filter((n) => !report.tools.includes(n));
    if (missing.length) problems.push(`tools/list lacks ${missing.join(", ")}`);
    const sendSms = tools.find((t) => t.name === "send_sms");
    if (sendSms?.outputSchema) report.notes.push("send_sms declares an outputSchema");

    // 2. unpaid call
    const args = { to: "+14155550123", message: "hi from mcp" };
    const unpaid = await callTool("unpaid send_sms", { name: "send_sms", arguments: args });
    const text0 = unpaid.content?.[0]?.type === "text" ? unpaid.content[0].text : undefined;
    const fromText = text0 !== undefined ? parseJson(text0) : undefined;
    report.unpaid = { isError: unpaid.isError ?? false, structuredContent: unpaid.structuredContent, text: text0 };
    if (unpaid.isError !== true) problems.push("unpaid send_sms: isError is not true");
    if (!isPaymentRequired(unpaid.structuredContent))
      problems.push("unpaid send_sms: structuredContent is not an x402 v2 PaymentRequired");
    if (!isPaymentRequired(fromText)) problems.push("unpaid send_sms: content[0].text is not a JSON PaymentRequired");
    else if (JSON.stringify(fromText) !== JSON.stringify(unpaid.structuredContent))
      report.notes.push("content[0].text JSON differs from structuredContent");

    // 3. paid call
    const paymentRequired = isPaymentRequired(unpaid.structuredContent) ? unpaid.structuredContent : fromText;
    if (!isPaymentRequired(paymentRequired)) fail(problems.join("; "), report);
    const x402 = new x402Client((_version, accepts) => accepts[0]).register(env.network, new ExactEvmScheme(account));
    // accepts[0] only: the selector above picks it among the options the registered scheme fits.
    const first = paymentRequired.accepts[0];
    const paymentPayload = await x402.createPaymentPayload({ ...paymentRequired, accepts: [first] });
    report.paymentPayload = paymentPayload;
    const paid = await callTool("paid send_sms", {
      name: "send_sms",
      arguments: args,
      _meta: { "x402/payment": paymentPayload },
    });
    const pr = paid._meta?.["x402/payment-response"];
    report.paid = {
      isError: paid.isError ?? false,
      structuredContent: paid.structuredContent,
      content: paid.content,
      paymentResponse: pr ?? null,
    };
    report.transaction = pr?.transaction ?? null;
    if (paid.isError) problems.push("paid send_sms: isError is true");
    if (!pr) problems.push('paid send_sms: no result._meta["x402/payment-response"]');
    else {
      if (pr.success !== true) problems.push("paid send_sms: payment-response success is not true");
      if (!/^0x[0-9a-fA-F]{64}$/.test(pr.transaction ?? "")) problems.push("paid send_sms: payment-response has no transaction hash");
    }

    // 4. validation error
    const bad = await callTool("bad-phone send_sms", { name: "send_sms", arguments: { to: "not-a-phone", message: "hi" } });
    const badText = bad.content?.[0]?.type === "text" ? bad.content[0].text : undefined;
    report.badPhone = { isError: bad.isError ?? false, structuredContent: bad.structuredContent, text: badText };
    if (bad.isError !== true) problems.push("bad-phone send_sms: isError is not true");
    if (isPaymentRequired(bad.structuredContent) || isPaymentRequired(parseJson(badText ?? "")))
      problems.push("bad-phone send_sms: answered with an x402 PaymentRequired instead of a validation error");
  } catch (e) {
    // A JSON-RPC error (McpError) rather than a tool result lands here.
    problems.push(`MCP call failed: ${e?.message ?? e}${e?.code !== undefined ? ` (code ${e.code})` : ""}`);
  } finally {
    await transport.terminateSession().catch(() => {});
    await client.close().catch(() => {});
  }
  if (problems.length) fail(problems.join("; "), report);
  result({ ok: true, ...report });
});
