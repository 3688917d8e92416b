//! Sign-In with Ethereum (EIP-4361): the message we hand out, and the strict parse and checks of the
//! one that comes back signed.

use alloy::primitives::{Address, B256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A parsed EIP-4361 message (the fields Dial issues and checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiweMessage {
    pub domain: String,
    pub address: Address,
    pub statement: Option<String>,
    pub uri: String,
    pub version: String,
    pub chain_id: u64,
    pub nonce: String,
    pub issued_at: i64,
    pub expiration_time: Option<i64>,
    pub not_before: Option<i64>,
}

pub const STATEMENT: &str = "Sign in to Dial to manage your phone numbers.";

impl SiweMessage {
    /// The message text, exactly as EIP-4361 lays it out.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} wants you to sign in with your Ethereum account:\n{}\n\n",
            self.domain,
            self.address.to_checksum(None)
        );
        if let Some(statement) = &self.statement {
            s.push_str(statement);
            s.push_str("\n\n");
        }
        s.push_str(&format!(
            "URI: {}\nVersion: {}\nChain ID: {}\nNonce: {}\nIssued At: {}",
            self.uri,
            self.version,
            self.chain_id,
            self.nonce,
            format_rfc3339(self.issued_at)
        ));
        if let Some(t) = self.expiration_time {
            s.push_str(&format!("\nExpiration Time: {}", format_rfc3339(t)));
        }
        if let Some(t) = self.not_before {
            s.push_str(&format!("\nNot Before: {}", format_rfc3339(t)));
        }
        s
    }

    /// Parses a message in the EIP-4361 layout; anything unexpected is an error naming the line.
    ///
    /// Never panics, whatever the input (a proptest here and the `siwe_parse` fuzz target in
    /// `fuzz/` hold it to that): lines are taken from one cursor and only matched with
    /// `strip_prefix`/`strip_suffix`, never indexed; times are parsed by the `time` crate.
    ///
    /// # Errors
    /// A sentence naming the first line that is not as EIP-4361 lays it out.
    pub fn parse(text: &str) -> Result<SiweMessage, String> {
        let mut lines = text.split('\n').peekable();
        let first = lines.next().unwrap_or_default();
        let domain = first
            .strip_suffix(" wants you to sign in with your Ethereum account:")
            .filter(|d| !d.is_empty())
            .ok_or("line 1 must be \"<domain> wants you to sign in with your Ethereum account:\"")?
            .to_owned();
        let address_line = lines.next().ok_or("missing the address line")?;
        let address = crate::protocol::primitives::parse_address(address_line)
            .map_err(|e| format!("address line: {e}"))?;
        if address.to_checksum(None) != address_line {
            return Err("the address must be EIP-55 checksummed".into());
        }
        if lines.next() != Some("") {
            return Err("an empty line must follow the address".into());
        }
        let mut statement = None;
        if let Some(line) = lines.next_if(|l| !l.starts_with("URI: ")) {
            statement = Some(line.to_owned());
            if lines.next() != Some("") {
                return Err("an empty line must follow the statement".into());
            }
        }
        let mut field = |name: &str, required: bool| -> Result<Option<String>, String> {
            match lines.next_if(|l| l.starts_with(name)) {
                Some(line) => Ok(line.strip_prefix(name).map(str::to_owned)),
                None if required => Err(format!("missing {name:?}")),
                None => Ok(None),
            }
        };
        let uri = field("URI: ", true)?.unwrap_or_default();
        let version = field("Version: ", true)?.unwrap_or_default();
        let chain_id = field("Chain ID: ", true)?
            .unwrap_or_default()
            .parse::<u64>()
            .map_err(|_| "Chain ID is not a number")?;
        let nonce = field("Nonce: ", true)?.unwrap_or_default();
        let issued_at = parse_rfc3339(&field("Issued At: ", true)?.unwrap_or_default())?;
        let expiration_time = field("Expiration Time: ", false)?
            .map(|t| parse_rfc3339(&t))
            .transpose()?;
        let not_before = field("Not Before: ", false)?
            .map(|t| parse_rfc3339(&t))
            .transpose()?;
        // Request ID and Resources are allowed but carry nothing Dial relies on.
        let _ = field("Request ID: ", false)?;
        if lines.next_if_eq(&"Resources:").is_some() {
            while lines.next_if(|l| l.starts_with("- ")).is_some() {}
        }
        if let Some(line) = lines.next() {
            return Err(format!("unexpected line {line:?}"));
        }
        if version != "1" {
            return Err("Version must be 1".into());
        }
        if nonce.len() < 8 || !nonce.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err("Nonce must be at least 8 alphanumeric characters".into());
        }
        Ok(SiweMessage {
            domain,
            address,
            statement,
            uri,
            version,
            chain_id,
            nonce,
            issued_at,
            expiration_time,
            not_before,
        })
    }
}

/// The EIP-191 `personal_sign` digest of a message.
pub fn eip191_digest(message: &str) -> B256 {
    alloy::primitives::eip191_hash_message(message)
}

/// Formats Unix seconds as RFC 3339 in UTC (`2026-11-18T11:06:40Z`). A time outside the years
/// 0000–9999 (never issued by Dial, never accepted by [`parse_rfc3339`]) falls back to its number
/// of seconds.
pub use crate::clock::rfc3339 as format_rfc3339;

/// Parses an RFC 3339 date-time (`2026-11-22T07:20:36Z`, optional fraction, `Z` or `±HH:MM`)
/// into Unix seconds (the fraction is dropped).
///
/// # Errors
/// When `s` is not RFC 3339, or is a time whose UTC year is outside 0000–9999 (it could not be
/// written back).
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    // The `time` crate also takes a space between date and time (RFC 3339 allows it as a note);
    // EIP-4361 messages use `T`.
    if !s
        .as_bytes()
        .get(10)
        .is_some_and(|b| matches!(b, b'T' | b't'))
    {
        return Err(format!(
            "{s:?} is not an RFC 3339 time (no T after the date)"
        ));
    }
    let unix = OffsetDateTime::parse(s, &Rfc3339)
        .map(OffsetDateTime::unix_timestamp)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))?;
    match crate::clock::utc_rfc3339(unix) {
        Some(_) => Ok(unix),
        None => Err(format!("{s:?} is outside the years 0000-9999 in UTC")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SiweMessage {
        SiweMessage {
            domain: "dial.example".into(),
            address: "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
                .parse()
                .unwrap(),
            statement: Some(STATEMENT.into()),
            uri: "https://dial.example".into(),
            version: "1".into(),
            chain_id: 84532,
            nonce: "abcDEF123456".into(),
            issued_at: 1_795_000_000,
            expiration_time: Some(1_795_000_600),
            not_before: None,
        }
    }

    #[test]
    fn message_round_trips_through_its_text() {
        let m = sample();
        let text = m.to_text();
        assert!(text.starts_with("dial.example wants you to sign in with your Ethereum account:\n0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed\n\n"));
        assert_eq!(SiweMessage::parse(&text).unwrap(), m);
    }

    #[test]
    fn malformed_messages_are_refused() {
        let text = sample().to_text();
        for bad in [
            text.replace(
                "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
                "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed",
            ),
            text.replace("Version: 1", "Version: 2"),
            text.replace("Nonce: abcDEF123456", "Nonce: short"),
            text.replace("Chain ID: 84532", "Chain ID: x"),
            format!("{text}\nExtra: line"),
            text.replace(" wants you", " would like you"),
        ] {
            assert!(SiweMessage::parse(&bad).is_err(), "accepted:\n{bad}");
        }
    }

    #[test]
    fn rfc3339_round_trips() {
        for t in [0i64, 951_782_400, 1_795_000_000, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)).unwrap(), t);
        }
        assert_eq!(format_rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(
            parse_rfc3339("2026-11-18T12:06:40.123+01:00").unwrap(),
            1_795_000_000
        );
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-11-18 08:26:40Z",
            "2026-11-18T08:26:40",
            "yesterday",
            "2026-11-18T12:06:40+0\u{e9}00",
            "2026-11-18T12:06:4\u{e9}",
            "\u{e9}\u{e9}\u{e9}\u{e9}-11-18T12:06:40Z",
            "2026-11-18T12:06:40.\u{1f600}Z",
            "",
            "0000-01-01T00:00:00+01:00",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn eip191_digest_is_personal_sign() {
        let m = "hello";
        let mut data = format!("\x19Ethereum Signed Message:\n{}", m.len()).into_bytes();
        data.extend_from_slice(m.as_bytes());
        assert_eq!(eip191_digest(m), alloy::primitives::keccak256(data));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_on_any_text(text in "\\PC*") {
            let _ = SiweMessage::parse(&text);
            let _ = parse_rfc3339(&text);
        }

        #[test]
        fn parse_never_panics_on_a_cut_or_spliced_message(at in 0usize..1000, splice in "\\PC{0,3}") {
            let text = sample().to_text();
            let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
            let at = boundaries[at % boundaries.len()];
            let _ = SiweMessage::parse(&text[..at]);
            let mut spliced = text.clone();
            spliced.insert_str(at, &splice);
            let _ = SiweMessage::parse(&spliced);
        }
    }
}
