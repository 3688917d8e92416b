//! Phone numbers and SMS bodies: E.164 validation and segment counting (GSM-7 or UCS-2).

/// The longest body we accept: 10 concatenated segments of GSM-7 (carriers drop longer ones).
pub const MAX_SEGMENTS: usize = 10;

/// An E.164 phone number: `+`, a country code not starting with 0, at most 15 digits in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn parse(s: &str) -> Result<PhoneNumber, String> {
        let digits = s
            .strip_prefix('+')
            .ok_or_else(|| format!("{s:?} is not E.164: it must start with +"))?;
        let ok = (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if ok {
            Ok(PhoneNumber(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not E.164: + then 8 to 15 digits, no leading 0"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The encoding a body needs and how many segments it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentCount {
    pub encoding: Encoding,
    pub segments: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// Characters that take an escape plus one septet (two units).
const GSM7_EXTENSION: &str = "^{}\\[~]|€\u{c}";

/// Counts segments as a carrier does: GSM-7 160 units single / 153 per part; UCS-2 70 UTF-16 units
/// single / 67 per part.
pub fn count_segments(body: &str) -> SegmentCount {
    let mut gsm_units = 0usize;
    let mut gsm = true;
    for c in body.chars() {
        if GSM7_BASIC.contains(c) {
            gsm_units += 1;
        } else if GSM7_EXTENSION.contains(c) {
            gsm_units += 2;
        } else {
            gsm = false;
            break;
        }
    }
    let (encoding, units, single, part) = if gsm {
        (Encoding::Gsm7, gsm_units, 160, 153)
    } else {
        (Encoding::Ucs2, body.encode_utf16().count(), 70, 67)
    };
    let segments = if units <= single {
        1
    } else {
        units.div_ceil(part)
    };
    SegmentCount { encoding, segments }
}

/// Checks a message body: not empty, at most [`MAX_SEGMENTS`] segments.
pub fn check_body(body: &str) -> Result<SegmentCount, String> {
    if body.trim().is_empty() {
        return Err("the message body is empty".into());
    }
    let count = count_segments(body);
    if count.segments > MAX_SEGMENTS {
        return Err(format!(
            "the message needs {} segments; at most {MAX_SEGMENTS} are sent",
            count.segments
        ));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_is_strict() {
        assert!(PhoneNumber::parse("+14155550100").is_ok());
        assert!(PhoneNumber::parse("+447700900123").is_ok());
        for bad in [
            "14155550100",
            "+0155550100",
            "+1415555",
            "+1415555010012345",
            "+1 415 555 0100",
            "+1415555010a",
            "",
        ] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn segments_follow_gsm7_and_ucs2_limits() {
        let c = |s: &str| count_segments(s);
        assert_eq!(c(&"a".repeat(160)).segments, 1);
        assert_eq!(c(&"a".repeat(161)).segments, 2);
        assert_eq!(c(&"a".repeat(306)).segments, 2);
        assert_eq!(c(&"a".repeat(307)).segments, 3);
        // An extension character costs two units.
        assert_eq!(c(&"€".repeat(80)).segments, 1);
        assert_eq!(c(&"€".repeat(81)).segments, 2);
        assert_eq!(c(&"€".repeat(81)).encoding, Encoding::Gsm7);
        // One character outside GSM-7 switches the whole message to UCS-2.
        let mut s = "a".repeat(69);
        s.push('😀'); // two UTF-16 units
        assert_eq!(c(&s).encoding, Encoding::Ucs2);
        assert_eq!(c(&s).segments, 2);
        assert_eq!(c(&"ж".repeat(70)).segments, 1);
        assert_eq!(c(&"ж".repeat(71)).segments, 2);
        assert!(check_body("").is_err());
        assert!(check_body(&"a".repeat(153 * 10)).is_ok());
        assert!(check_body(&"a".repeat(153 * 10 + 1)).is_err());
    }
}
