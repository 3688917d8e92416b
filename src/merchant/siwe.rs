//! Sign-In with Ethereum (EIP-4361): the message we hand out, and the strict parse and checks of the
//! one that comes back signed.

use alloy::primitives::{Address, B256, keccak256};

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
    pub fn parse(text: &str) -> Result<SiweMessage, String> {
        let mut lines = text.split('\n');
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
        let mut rest: Vec<&str> = lines.collect();
        let mut statement = None;
        if rest.first().is_some_and(|l| !l.starts_with("URI: ")) {
            statement = Some(rest.remove(0).to_owned());
            if rest.first() != Some(&"") {
                return Err("an empty line must follow the statement".into());
            }
            rest.remove(0);
        }
        let mut field = |name: &str, required: bool| -> Result<Option<String>, String> {
            match rest.first().and_then(|l| l.strip_prefix(name)) {
                Some(v) => {
                    let v = v.to_owned();
                    rest.remove(0);
                    Ok(Some(v))
                }
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
        if rest.first() == Some(&"Resources:") {
            rest.remove(0);
            while rest.first().is_some_and(|l| l.starts_with("- ")) {
                rest.remove(0);
            }
        }
        if !rest.is_empty() {
            return Err(format!("unexpected line {:?}", rest[0]));
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
    let mut data = format!("\x19Ethereum Signed Message:\n{}", message.len()).into_bytes();
    data.extend_from_slice(message.as_bytes());
    keccak256(data)
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Parses RFC 3339 (`2026-11-22T07:20:36Z`, optional fraction, `Z` or `±HH:MM`) into Unix seconds.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not an RFC 3339 time");
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        s.get(r)
            .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(bad)
    };
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && &rest[3..4] == ":" =>
        {
            let oh: i64 = rest[1..3].parse().map_err(|_| bad())?;
            let om: i64 = rest[4..6].parse().map_err(|_| bad())?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return Err(bad()),
    };
    Ok(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset)
}

// Howard Hinnant's civil calendar algorithms (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
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
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }
}
