//! The x402 wire: v1 and v2 structures, header codecs, network names and reason codes.
//!
//! Pure: no I/O. Everything a client sends is parsed here, once, into typed values; the rest of the
//! crate never sees raw JSON.

pub mod codec;
pub mod discovery;
pub mod primitives;
pub mod reason;
pub mod request;
pub mod wire;

pub use codec::{HeaderDecodeError, decode_header, encode_header};

/// The `_meta` keys of the x402 MCP transport.
pub mod mcp {
    /// On a tool call: the PaymentPayload (the object, not base64).
    pub const PAYMENT: &str = "x402/payment";
    /// On a tool result: the settlement receipt (SettleResponse).
    pub const PAYMENT_RESPONSE: &str = "x402/payment-response";
}
pub use primitives::{AtomicAmount, ChainId, TransferMethod, X402Version};
pub use reason::Reason;
pub use request::{
    BadRequest, FacilitatorRequest, PaymentBody, PaymentIdentifier, Requirements,
    parse_facilitator_request,
};
