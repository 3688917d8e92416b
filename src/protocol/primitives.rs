//! Newtypes for the scalar values of the wire, each with the one strict textual form it accepts.

use std::fmt;
use std::str::FromStr;

use alloy::primitives::utils::{ParseUnits, format_units, parse_units};
use alloy::primitives::{Address, B256, U256};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The protocol generation of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum X402Version {
    V1,
    V2,
}

impl X402Version {
    pub fn number(self) -> u8 {
        match self {
            X402Version::V1 => 1,
            X402Version::V2 => 2,
        }
    }

    pub fn from_number(n: u64) -> Option<Self> {
        match n {
            1 => Some(X402Version::V1),
            2 => Some(X402Version::V2),
            _ => None,
        }
    }
}

impl Serialize for X402Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.number())
    }
}

impl<'de> Deserialize<'de> for X402Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        X402Version::from_number(n)
            .ok_or_else(|| serde::de::Error::custom(format!("unsupported x402Version {n}")))
    }
}

/// An amount of a token in atomic units (USDC: 6 decimals, "10000" = $0.01), written on the wire as a
/// decimal string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct AtomicAmount(pub U256);

impl AtomicAmount {
    pub fn from_u64(v: u64) -> Self {
        AtomicAmount(U256::from(v))
    }
}

impl fmt::Display for AtomicAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for AtomicAmount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_decimal_u256(s).map(AtomicAmount)
    }
}

/// Converts a dollar price such as `"0.01"` or `"100"` into atomic units of a token with
/// `decimals` decimals, refusing more precision than the token has.
///
/// The grammar is checked here (digits, then optionally `.` and 1 to `decimals` digits), because
/// alloy's `parse_units` is lenient where a price must not be: it truncates extra decimals, takes
/// a sign, `"1."`, `".5"` and digit separators. The scaling and its overflow check are alloy's.
///
/// # Errors
///
/// A message naming the price when it is not such a decimal or does not fit in a `uint256`.
pub fn dollars_to_atomic(price: &str, decimals: u8) -> Result<AtomicAmount, String> {
    let refused = || format!("{price:?} is not a price with at most {decimals} decimals");
    let (whole, frac) = match price.split_once('.') {
        Some((whole, frac)) if !frac.is_empty() => (whole, frac),
        Some(_) => return Err(refused()),
        None => (price, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > usize::from(decimals) {
        return Err(refused());
    }
    match parse_units(price, decimals) {
        Ok(ParseUnits::U256(v)) => Ok(AtomicAmount(v)),
        // Unreachable with a digits-only price, but a signed answer is never a price.
        Ok(ParseUnits::I256(_)) => Err(refused()),
        Err(_) => Err(format!(
            "{price:?} is not a decimal price that fits in uint256"
        )),
    }
}

/// Formats atomic units as a dollar amount (`10000` with 6 decimals → `"0.01"`): alloy's
/// `format_units` without the trailing zeros.
pub fn atomic_to_dollars(amount: AtomicAmount, decimals: u8) -> String {
    let full = match format_units(amount.0, decimals) {
        Ok(full) => full,
        // More than 77 decimals (alloy's limit): a uint256 is then always under one whole unit.
        Err(_) => format!("0.{:0>width$}", amount.0, width = usize::from(decimals)),
    };
    match full.split_once('.') {
        Some((whole, frac)) => match frac.trim_end_matches('0') {
            "" => whole.to_owned(),
            frac => format!("{whole}.{frac}"),
        },
        None => full,
    }
}

/// Parses a plain decimal (no sign, no exponent, no hex) into a `U256`, at most 78 digits.
pub fn parse_decimal_u256(s: &str) -> Result<U256, String> {
    if s.is_empty() || s.len() > 78 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("expected a decimal integer string, got {s:?}"));
    }
    U256::from_str_radix(s, 10).map_err(|_| format!("{s:?} does not fit in uint256"))
}

impl Serialize for AtomicAmount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AtomicAmount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_uint(d).map(AtomicAmount)
    }
}

/// Accepts a decimal string (the wire form) or a non-negative JSON integer (seen from some clients).
pub fn deserialize_uint<'de, D: Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
    uint_of(d, false)
}

/// A `U256` written in decimal or as `0x` hex (Permit2 nonces come both ways).
pub fn deserialize_uint_or_hex<'de, D: Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
    uint_of(d, true)
}

fn uint_of<'de, D: Deserializer<'de>>(d: D, hex_too: bool) -> Result<U256, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Int(u64),
    }
    match Raw::deserialize(d)? {
        Raw::Text(s) => match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) if hex_too && !hex.is_empty() && hex.len() <= 64 => {
                U256::from_str_radix(hex, 16).map_err(serde::de::Error::custom)
            }
            Some(_) if hex_too => Err(serde::de::Error::custom(
                "a 0x number needs 1 to 64 hex digits",
            )),
            _ => parse_decimal_u256(&s).map_err(serde::de::Error::custom),
        },
        Raw::Int(n) => Ok(U256::from(n)),
    }
}

/// How a payment's token moves (`extra.assetTransferMethod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferMethod {
    /// The token's own `transferWithAuthorization`.
    Eip3009,
    /// Permit2's `permitWitnessTransferFrom`, through an x402 proxy: any ERC-20.
    Permit2,
}

impl TransferMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferMethod::Eip3009 => "eip3009",
            TransferMethod::Permit2 => "permit2",
        }
    }
}

/// Serialises a `U256` as a decimal string.
pub fn serialize_uint<S: Serializer>(v: &U256, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// An EVM address written as `0x` + 40 hex digits (any case; the checksum is not enforced because
/// lower-case addresses are common on the wire).
pub fn deserialize_address<'de, D: Deserializer<'de>>(d: D) -> Result<Address, D::Error> {
    let s = String::deserialize(d)?;
    parse_address(&s).map_err(serde::de::Error::custom)
}

pub fn parse_address(s: &str) -> Result<Address, String> {
    let hex = s
        .strip_prefix("0x")
        .ok_or_else(|| format!("address {s:?} must start with 0x"))?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "address {s:?} must be 0x followed by 40 hex digits"
        ));
    }
    Address::from_str(s).map_err(|e| format!("address {s:?}: {e}"))
}

/// A 32-byte value written as `0x` + exactly 64 hex digits (an EIP-3009 nonce).
pub fn deserialize_b256<'de, D: Deserializer<'de>>(d: D) -> Result<B256, D::Error> {
    let s = String::deserialize(d)?;
    let hex = s
        .strip_prefix("0x")
        .ok_or_else(|| serde::de::Error::custom(format!("{s:?} must start with 0x")))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(serde::de::Error::custom(format!(
            "nonce must be 0x followed by exactly 64 hex digits (32 bytes), got {} hex digits",
            hex.len()
        )));
    }
    B256::from_str(&s).map_err(serde::de::Error::custom)
}

/// Hex bytes `0x…` of even length.
pub fn deserialize_hex_bytes<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<alloy::primitives::Bytes, D::Error> {
    let s = String::deserialize(d)?;
    let hex = s
        .strip_prefix("0x")
        .ok_or_else(|| serde::de::Error::custom("hex bytes must start with 0x"))?;
    alloy::hex::decode(hex)
        .map(Into::into)
        .map_err(|e| serde::de::Error::custom(format!("invalid hex bytes: {e}")))
}

/// An EVM chain id; its CAIP-2 form is `eip155:<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChainId(pub u64);

impl ChainId {
    pub fn caip2(self) -> String {
        format!("eip155:{}", self.0)
    }

    /// Parses `eip155:<decimal>`; anything else (another namespace, a v1 name) is `None`.
    pub fn from_caip2(s: &str) -> Option<Self> {
        let reference = s.strip_prefix("eip155:")?;
        if reference.is_empty()
            || reference.len() > 19
            || !reference.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        reference.parse().ok().map(ChainId)
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "eip155:{}", self.0)
    }
}

/// The v1 names of the built-in networks; configured networks may add their own.
pub const BUILTIN_V1_NAMES: &[(&str, u64)] = &[("base", 8453), ("base-sepolia", 84532)];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permit2_numbers_read_in_decimal_or_hex_and_nothing_else() {
        #[derive(Deserialize)]
        struct N(#[serde(deserialize_with = "deserialize_uint_or_hex")] U256);
        let read = |s: &str| serde_json::from_str::<N>(s).map(|n| n.0);
        assert_eq!(read(r#""255""#).unwrap(), U256::from(255u64));
        assert_eq!(read(r#""0xff""#).unwrap(), U256::from(255u64));
        assert_eq!(read("7").unwrap(), U256::from(7u64));
        assert!(read(r#""0x""#).is_err());
        assert!(read(&format!(r#""0x{}""#, "f".repeat(65))).is_err());
        assert!(read(r#""-1""#).is_err());
        assert!(read(r#""0xzz""#).is_err());
        // EIP-3009 fields stay decimal, as the wire format says.
        #[derive(Deserialize)]
        struct D(#[serde(deserialize_with = "deserialize_uint")] U256);
        assert!(serde_json::from_str::<D>(r#""0xff""#).is_err());
        assert_eq!(
            serde_json::from_str::<D>(r#""255""#).unwrap().0,
            U256::from(255u64)
        );
    }

    #[test]
    fn dollar_prices_convert_exactly() {
        for (price, atomic) in [
            ("0.01", 10_000u64),
            ("100", 100_000_000),
            ("2.45", 2_450_000),
            ("0", 0),
            ("0.000001", 1),
        ] {
            let a = dollars_to_atomic(price, 6).unwrap();
            assert_eq!(a, AtomicAmount::from_u64(atomic), "{price}");
            assert_eq!(atomic_to_dollars(a, 6), price);
        }
        for bad in [
            "",
            ".5",
            "1.",
            "0.0000001",
            "-1",
            "-0.5",
            "+1",
            "1e2",
            "1,5",
            "1_000",
            "abc",
            " 1",
            "1.2.3",
        ] {
            assert!(dollars_to_atomic(bad, 6).is_err(), "{bad:?} accepted");
        }
        // No decimals at all, and more than a uint256 holds.
        assert_eq!(dollars_to_atomic("7", 0), Ok(AtomicAmount::from_u64(7)));
        assert!(dollars_to_atomic("0.1", 0).is_err());
        assert_eq!(atomic_to_dollars(AtomicAmount::from_u64(70), 0), "70");
        assert!(dollars_to_atomic(&"9".repeat(78), 6).is_err());
        assert_eq!(atomic_to_dollars(AtomicAmount(U256::MAX), 78).len(), 80);
    }

    proptest::proptest! {
        /// Any atomic amount formats to a price that converts back to it, for every usual
        /// number of decimals, and the price never has trailing zeros after its point.
        #[test]
        fn dollars_round_trip(atomic in proptest::num::u128::ANY, decimals in 0u8..=30) {
            let amount = AtomicAmount(U256::from(atomic));
            let price = atomic_to_dollars(amount, decimals);
            proptest::prop_assert!(!price.contains('.') || !price.ends_with('0'), "{}", price);
            proptest::prop_assert_eq!(dollars_to_atomic(&price, decimals), Ok(amount));
        }
    }

    #[test]
    fn amounts_are_strict_decimals() {
        assert_eq!(
            "10000".parse::<AtomicAmount>().unwrap(),
            AtomicAmount::from_u64(10_000)
        );
        for bad in ["", "-1", "1e6", "0x10", " 1", "1.5"] {
            assert!(bad.parse::<AtomicAmount>().is_err(), "{bad:?} accepted");
        }
        let too_big = "9".repeat(79);
        assert!(too_big.parse::<AtomicAmount>().is_err());
    }

    #[test]
    fn caip2_round_trip() {
        assert_eq!(ChainId::from_caip2("eip155:8453"), Some(ChainId(8453)));
        assert_eq!(ChainId(84532).caip2(), "eip155:84532");
        for bad in ["base", "eip155:", "eip155:x", "solana:abc", "eip155:-1"] {
            assert_eq!(ChainId::from_caip2(bad), None, "{bad}");
        }
    }

    #[test]
    fn addresses_need_0x_and_40_hex() {
        assert!(parse_address("0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913").is_ok());
        assert!(parse_address("833589fCD6eDb6E08f4c7C32D4f71b54bdA02913").is_err());
        assert!(parse_address("0x833589fCD6eDb6E08f4c7C32D4f71b54bdA029").is_err());
        assert!(parse_address("0xzz3589fCD6eDb6E08f4c7C32D4f71b54bdA02913").is_err());
    }
}
