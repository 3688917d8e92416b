//! Any bytes, as text, through the SIWE (EIP-4361) message parser and the RFC 3339 parser: they
//! must return, never panic. A message that parses must print back to text that parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use x402d::merchant::siwe::{SiweMessage, parse_rfc3339};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_rfc3339(&text);
    if let Ok(message) = SiweMessage::parse(&text) {
        let again = SiweMessage::parse(&message.to_text());
        assert_eq!(again.as_ref(), Ok(&message), "{text:?}");
    }
});
