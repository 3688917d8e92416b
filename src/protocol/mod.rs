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
pub use primitives::{AtomicAmount, ChainId, TransferMethod, X402Version};
pub use reason::Reason;
pub use request::{
    BadRequest, FacilitatorRequest, PaymentBody, PaymentIdentifier, Requirements,
    parse_facilitator_request,
};
