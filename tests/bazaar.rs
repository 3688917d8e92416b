//! The facilitator's Bazaar: what resource servers declare in payments (`resource` and
//! `extensions.bazaar`) is catalogued once the payment settles, sanitised, keyed per resource (per
//! tool for MCP), served with pagination beside Dial's own routes, and aged out. Its own binary:
//! the ageing step moves the process's clock.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn http_declaration() -> Value {
    json!({
        "info": {"input": {"type": "http", "method": "GET", "queryParams": {"city": "Paris"}},
                 "output": {"type": "json", "example": {"weather": "sunny"}}},
        "schema": {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                   "properties": {"input": {"type": "object",
                        "properties": {"type": {"const": "http"}, "method": {"enum": ["GET", "HEAD", "DELETE"]},
                                       "queryParams": {"type": "object"}},
                        "required": ["type", "method"], "additionalProperties": false},
                     "output": {"type": "object"}},
                   "required": ["input"]}
    })
}

fn mcp_declaration(tool: &str) -> Value {
    json!({
        "info": {"input": {"type": "mcp", "tool": tool, "inputSchema": {"type": "object"}}},
        "schema": {"type": "object", "properties": {"input": {"type": "object",
            "properties": {"type": {"const": "mcp"}, "tool": {"type": "string"}, "inputSchema": {"type": "object"}},
            "required": ["type", "tool", "inputSchema"]}}, "required": ["input"]}
    })
}

/// A fresh paid v2 body for `req` declaring `bazaar` for `resource`.
async fn declared_body(h: &Harness, resource: Value, bazaar: Value) -> Value {
    let payer = h.funded_payer(ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let mut body = h.body(2, &req, &h.sign(&payer, &req));
    body["paymentPayload"]["resource"] = resource;
    body["paymentPayload"]["extensions"] = json!({ "bazaar": bazaar });
    body
}

/// Posts `body` to `route`; the answer and the decoded `EXTENSION-RESPONSES` header.
async fn post(h: &Harness, route: &str, body: &Value) -> (Value, Value) {
    let r = h
        .http
        .post(format!("{}{route}", h.url()))
        .json(body)
        .send()
        .await
        .unwrap();
    let ext = r
        .headers()
        .get("extension-responses")
        .map(|v| {
            let bytes = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                v.to_str().unwrap(),
            )
            .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        })
        .unwrap_or(Value::Null);
    (r.json().await.unwrap(), ext)
}

async fn catalogue(h: &Harness, query: &str) -> Value {
    h.http
        .get(format!("{}/discovery/resources{query}", h.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_declarations_are_catalogued_sanitised_paginated_and_aged_out() {
    let h = Harness::start().await;
    assert_eq!(catalogue(&h, "").await["pagination"]["total"], 0);

    let weather = json!({"url": "https://api.example.com/weather?city=Paris", "description": "Weather",
        "serviceName": "Example Weather", "tags": ["weather", "WEATHER", "forecast", "bad\u{7}tag"],
        "iconUrl": "https://127.0.0.1/icon.png"});
    let body = declared_body(&h, weather, http_declaration()).await;
    // Verify is read-only: nothing is catalogued before the payment settles.
    let (v, ext) = post(&h, "/verify", &body).await;
    assert_eq!(v["isValid"], true, "{v}");
    assert_eq!(ext["bazaar"]["status"], "processing", "{ext}");
    assert_eq!(catalogue(&h, "").await["pagination"]["total"], 0);
    let (s, ext) = post(&h, "/settle", &body).await;
    assert_eq!(s["success"], true, "{s}");
    assert_eq!(ext["bazaar"]["status"], "success", "{ext}");

    let page = catalogue(&h, "?type=http").await;
    assert_eq!(page["x402Version"], 2);
    assert_eq!(page["pagination"]["total"], 1, "{page}");
    let item = &page["items"][0];
    assert_eq!(
        item["resource"], "https://api.example.com/weather",
        "no query: {item}"
    );
    assert_eq!(item["type"], "http");
    assert_eq!(
        item["accepts"][0]["payTo"].as_str().unwrap().to_lowercase(),
        h.pay_to.to_string().to_lowercase()
    );
    assert_eq!(item["metadata"]["method"], "GET");
    assert_eq!(item["metadata"]["serviceName"], "Example Weather");
    assert_eq!(item["metadata"]["tags"], json!(["weather", "forecast"]));
    assert!(
        item["metadata"].get("iconUrl").is_none(),
        "IP-literal icon dropped: {item}"
    );
    assert!(item["lastUpdated"].as_str().unwrap().ends_with('Z'));

    // Two MCP tools on one server are two entries; a declaration failing its schema is rejected
    // (said in the header) while the payment still settles.
    for tool in ["send_sms", "buy_number"] {
        let body = declared_body(
            &h,
            json!({"url": "https://agents.example/mcp"}),
            mcp_declaration(tool),
        )
        .await;
        let (s, ext) = post(&h, "/settle", &body).await;
        assert_eq!(s["success"], true, "{s}");
        assert_eq!(ext["bazaar"]["status"], "success", "{ext}");
    }
    let mut wrong = http_declaration();
    wrong["info"]["input"]["method"] = json!("POST");
    let body = declared_body(&h, json!({"url": "https://api.example.com/w2"}), wrong).await;
    let (s, ext) = post(&h, "/settle", &body).await;
    assert_eq!(s["success"], true, "{s}");
    assert_eq!(ext["bazaar"]["status"], "rejected", "{ext}");
    assert!(
        ext["bazaar"]["rejectedReason"]
            .as_str()
            .unwrap()
            .contains("schema")
    );

    let mcp = catalogue(&h, "?type=mcp").await;
    assert_eq!(mcp["pagination"]["total"], 2, "{mcp}");
    let tools: Vec<&str> = mcp["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["toolName"].as_str().unwrap())
        .collect();
    assert!(
        tools.contains(&"send_sms") && tools.contains(&"buy_number"),
        "{tools:?}"
    );
    let all = catalogue(&h, "").await;
    assert_eq!(all["pagination"]["total"], 3);
    let second = catalogue(&h, "?limit=1&offset=1").await;
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        second["items"][0], all["items"][1],
        "pages are slices of one order"
    );
    let bad = h
        .http
        .get(format!("{}/discovery/resources?type=ftp", h.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // A week and a day later, unseen entries are gone.
    x402d::clock::advance(Duration::from_secs(8 * 24 * 3600));
    let aged = catalogue(&h, "").await;
    x402d::clock::reset();
    assert_eq!(aged["pagination"]["total"], 0, "{aged}");
}

/// What the official SDK declares (`@x402/extensions`, recorded in `tests/fixtures/bazaar-sdk.json`
/// by `tests/fixtures/record-bazaar.js`) is catalogued as it should be: a query route, a JSON body
/// route, and an MCP tool keyed by its `toolName`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_official_sdk_declares_is_catalogued() {
    let recorded: Value = serde_json::from_str(include_str!("fixtures/bazaar-sdk.json")).unwrap();
    assert!(
        recorded["sdk"]
            .as_str()
            .unwrap()
            .starts_with("@x402/extensions@2.")
    );
    let h = Harness::start().await;
    let cases = [
        ("http_query", "https://api.example.com/weather?city=Paris"),
        ("http_body", "https://api.example.com/sms"),
        ("mcp", "https://agents.example/mcp"),
    ];
    for (name, url) in cases {
        let body = declared_body(
            &h,
            json!({"url": url, "description": name}),
            recorded[name]["bazaar"].clone(),
        )
        .await;
        let (s, ext) = post(&h, "/settle", &body).await;
        assert_eq!(s["success"], true, "{name}: {s}");
        assert_eq!(ext["bazaar"]["status"], "success", "{name}: {ext}");
    }
    let http = catalogue(&h, "?type=http").await;
    assert_eq!(http["pagination"]["total"], 2, "{http}");
    let methods: Vec<&str> = http["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["method"].as_str().unwrap())
        .collect();
    assert!(
        methods.contains(&"GET") && methods.contains(&"POST"),
        "{http}"
    );
    let body_item = http["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["metadata"]["method"] == "POST")
        .unwrap();
    assert_eq!(
        body_item["metadata"]["input"]["bodyType"], "json",
        "{body_item}"
    );
    let mcp = catalogue(&h, "?type=mcp").await;
    assert_eq!(mcp["pagination"]["total"], 1, "{mcp}");
    assert_eq!(mcp["items"][0]["resource"], "https://agents.example/mcp");
    assert_eq!(mcp["items"][0]["metadata"]["toolName"], "send_sms", "{mcp}");
}
