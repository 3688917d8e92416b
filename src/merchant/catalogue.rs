//! The Dial API as data: one table drives the paywall's prices, the routes, discovery and OpenAPI.

use serde_json::{Value, json};

use crate::config::DialPrices;

/// What a paid route sells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    MessagesSend,
    SmsSend,
    NumbersBuy,
    NumbersBuyUs,
    NumbersBuyIntl,
    NumbersRenew,
    EsimCheckout,
    VerificationsStart,
    /// Sending from an owned number once its monthly quota is spent.
    NumbersMineSend,
}

/// A route that costs money.
pub struct PaidRoute {
    pub product: Product,
    pub path: &'static str,
    pub summary: &'static str,
    pub input: fn() -> Value,
    pub output: fn() -> Value,
    /// Charged on every call (false: only past a quota, decided by the handler).
    pub always_paid: bool,
    /// The MCP tool that calls this route (`/mcp`), if it is offered as one.
    pub tool: Option<&'static str>,
}

impl PaidRoute {
    /// The route's price as the paywall offers it: sending is metered per segment (also offered
    /// as `upto` up to the longest message), everything else is one price.
    pub fn offer_price(&self, prices: &DialPrices) -> super::paywall::Price {
        let metered = matches!(self.product, Product::MessagesSend | Product::SmsSend);
        super::paywall::Price {
            dollars: self.price(prices).to_owned(),
            description: self.summary.to_owned(),
            metered: metered.then_some(super::sms::MAX_SEGMENTS as u32),
        }
    }

    /// The route's price in dollars (per segment for metered routes).
    pub fn price<'a>(&self, prices: &'a DialPrices) -> &'a str {
        match self.product {
            Product::MessagesSend => &prices.messages_send,
            Product::SmsSend => &prices.sms_send,
            Product::NumbersBuy | Product::NumbersBuyUs | Product::NumbersBuyIntl => {
                &prices.numbers_buy
            }
            Product::NumbersRenew => &prices.numbers_renew,
            Product::EsimCheckout => &prices.esim_checkout,
            Product::VerificationsStart => &prices.verifications_start,
            Product::NumbersMineSend => &prices.numbers_mine_send,
        }
    }
}

/// A free route, listed for discovery and OpenAPI.
pub struct FreeRoute {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub bearer: bool,
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties, "additionalProperties": false})
}

fn e164() -> Value {
    json!({"type": "string", "pattern": "^\\+[1-9][0-9]{7,14}$", "description": "E.164 phone number"})
}

fn sent() -> Value {
    object(
        &["success", "messageId", "to", "segments"],
        json!({"success": {"type": "boolean"}, "messageId": {"type": "string"}, "to": e164(), "segments": {"type": "integer"}}),
    )
}

fn number_bought() -> Value {
    object(
        &["success", "phoneNumber", "country", "expiresAt"],
        json!({"success": {"type": "boolean"}, "phoneNumber": e164(), "country": {"type": "string"}, "expiresAt": {"type": "string", "format": "date-time"}}),
    )
}

fn country() -> Value {
    json!({"type": "string", "pattern": "^[A-Z]{2}$", "description": "ISO 3166-1 alpha-2"})
}

pub const PAID_ROUTES: &[PaidRoute] = &[
    PaidRoute {
        product: Product::MessagesSend,
        path: "/api/v1/messages/send",
        summary: "Send a text message",
        input: || {
            object(
                &["to", "body"],
                json!({"from": e164(), "to": e164(), "body": {"type": "string", "minLength": 1}}),
            )
        },
        output: sent,
        always_paid: true,
        tool: None,
    },
    PaidRoute {
        product: Product::SmsSend,
        path: "/api/v1/sms/send",
        summary: "Send an SMS",
        input: || {
            object(
                &["to", "message"],
                json!({"to": e164(), "message": {"type": "string", "minLength": 1}}),
            )
        },
        output: sent,
        always_paid: true,
        tool: Some("send_sms"),
    },
    PaidRoute {
        product: Product::NumbersBuy,
        path: "/api/v1/numbers/buy",
        summary: "Buy a phone number for a month (includes a monthly text quota)",
        input: || object(&["country"], json!({"country": country()})),
        output: number_bought,
        always_paid: true,
        tool: Some("buy_number"),
    },
    PaidRoute {
        product: Product::NumbersBuyUs,
        path: "/api/v1/numbers/buy/us",
        summary: "Buy a US phone number for a month",
        input: || object(&[], json!({})),
        output: number_bought,
        always_paid: true,
        tool: Some("buy_number_us"),
    },
    PaidRoute {
        product: Product::NumbersBuyIntl,
        path: "/api/v1/numbers/buy/intl",
        summary: "Buy a non-US phone number for a month",
        input: || object(&["country"], json!({"country": country()})),
        output: number_bought,
        always_paid: true,
        tool: Some("buy_number_intl"),
    },
    PaidRoute {
        product: Product::NumbersRenew,
        path: "/api/v1/numbers/mine/renew",
        summary: "Extend an owned number by a month",
        input: || object(&["phoneNumber"], json!({"phoneNumber": e164()})),
        output: || {
            object(
                &["success", "phoneNumber", "expiresAt"],
                json!({"success": {"type": "boolean"}, "phoneNumber": e164(), "expiresAt": {"type": "string", "format": "date-time"}}),
            )
        },
        always_paid: true,
        tool: None,
    },
    PaidRoute {
        product: Product::EsimCheckout,
        path: "/api/v1/esim/checkout",
        summary: "Buy an eSIM data package",
        input: || object(&["packageId"], json!({"packageId": {"type": "string"}})),
        output: || {
            object(
                &[
                    "success",
                    "packageId",
                    "iccid",
                    "activationCode",
                    "qrPayload",
                ],
                json!({"success": {"type": "boolean"}, "packageId": {"type": "string"}, "iccid": {"type": "string"}, "activationCode": {"type": "string"}, "qrPayload": {"type": "string"}}),
            )
        },
        always_paid: true,
        tool: Some("esim_checkout"),
    },
    PaidRoute {
        product: Product::VerificationsStart,
        path: "/api/v1/verifications/start",
        summary: "Rent a number to receive one service's verification code",
        input: || {
            object(
                &["service"],
                json!({"service": {"type": "string", "minLength": 1, "maxLength": 64}}),
            )
        },
        output: || {
            object(
                &[
                    "success",
                    "verificationId",
                    "phoneNumber",
                    "service",
                    "expiresAt",
                ],
                json!({"success": {"type": "boolean"}, "verificationId": {"type": "string"}, "phoneNumber": e164(), "service": {"type": "string"}, "expiresAt": {"type": "string", "format": "date-time"}}),
            )
        },
        always_paid: true,
        tool: Some("start_verification"),
    },
    PaidRoute {
        product: Product::NumbersMineSend,
        path: "/api/v1/numbers/mine/send",
        summary: "Send from an owned number (bearer; free within the monthly quota, then paid)",
        input: || {
            object(
                &["from", "to", "body"],
                json!({"from": e164(), "to": e164(), "body": {"type": "string", "minLength": 1}}),
            )
        },
        output: sent,
        always_paid: false,
        tool: None,
    },
];

pub const FREE_ROUTES: &[FreeRoute] = &[
    FreeRoute {
        method: "get",
        path: "/api/v1/auth/siwe",
        summary: "A SIWE nonce and the EIP-4361 message to sign (query: address, chainId)",
        bearer: false,
    },
    FreeRoute {
        method: "post",
        path: "/api/v1/auth/siwe",
        summary: "Exchange a signed SIWE message for a bearer token",
        bearer: false,
    },
    FreeRoute {
        method: "get",
        path: "/api/v1/numbers/mine",
        summary: "The caller's numbers",
        bearer: true,
    },
    FreeRoute {
        method: "get",
        path: "/api/v1/numbers/mine/messages",
        summary: "Texts received at the caller's numbers, oldest first (query: number, since, until, cursor, limit)",
        bearer: true,
    },
    FreeRoute {
        method: "put",
        path: "/api/v1/numbers/mine/webhook",
        summary: "Set or remove a number's webhook (each received text is POSTed to it, signed)",
        bearer: true,
    },
    FreeRoute {
        method: "get",
        path: "/api/v1/numbers/mine/webhook-deliveries",
        summary: "The caller's webhook deliveries and every attempt",
        bearer: true,
    },
    FreeRoute {
        method: "get",
        path: "/api/v1/verifications/{id}",
        summary: "A verification rental's status and code (bearer: its readToken or the payer's session; query: wait)",
        bearer: true,
    },
    FreeRoute {
        method: "post",
        path: "/api/v1/inbound/twilio",
        summary: "Twilio's incoming-message webhook (X-Twilio-Signature required)",
        bearer: false,
    },
    FreeRoute {
        method: "get",
        path: "/api/v1/esim/packages",
        summary: "The eSIM catalogue",
        bearer: false,
    },
    FreeRoute {
        method: "get",
        path: "/api/v1/discovery",
        summary: "Every route with its price",
        bearer: false,
    },
    FreeRoute {
        method: "get",
        path: "/discovery/resources",
        summary: "Paid resources in the Bazaar catalogue shape",
        bearer: false,
    },
    FreeRoute {
        method: "get",
        path: "/.well-known/x402",
        summary: "x402 resource list",
        bearer: false,
    },
    FreeRoute {
        method: "get",
        path: "/api/health",
        summary: "Dial is up",
        bearer: false,
    },
];

pub fn paid_route(path: &str) -> Option<&'static PaidRoute> {
    PAID_ROUTES.iter().find(|r| r.path == path)
}

/// An eSIM data package.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EsimPackage {
    pub id: &'static str,
    pub region: &'static str,
    pub data_gb: u32,
    pub days: u32,
}

pub const ESIM_PACKAGES: &[EsimPackage] = &[
    EsimPackage {
        id: "us-1gb-7d",
        region: "United States",
        data_gb: 1,
        days: 7,
    },
    EsimPackage {
        id: "eu-3gb-30d",
        region: "Europe",
        data_gb: 3,
        days: 30,
    },
    EsimPackage {
        id: "jp-5gb-15d",
        region: "Japan",
        data_gb: 5,
        days: 15,
    },
    EsimPackage {
        id: "global-1gb-7d",
        region: "Global",
        data_gb: 1,
        days: 7,
    },
];
