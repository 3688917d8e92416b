//! The L1 data fee an OP Stack chain (Base) charges a transaction on top of its L2 gas, computed
//! as the chain does since Fjord: the FastLZ-compressed size of the signed transaction, through
//! the fitted size estimate, times the L1 base and blob fees weighted by the chain's scalars.
//! The chain itself reads the inputs from the `GasPriceOracle` predeploy (and puts the result
//! in each receipt's `l1Fee`); here they are given, so a cost can be stated for any prices.

use alloy::primitives::{Address, U256, address};

/// The `GasPriceOracle` predeploy of every OP Stack chain (`getL1Fee(bytes)`, `l1BaseFee()`,
/// `blobBaseFee()`, `baseFeeScalar()`, `blobBaseFeeScalar()`).
pub const GAS_PRICE_ORACLE: Address = address!("420000000000000000000000000000000000000F");

/// What the L1 data fee depends on besides the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L1FeeInputs {
    /// L1 base fee of the latest L1 origin (wei).
    pub l1_base_fee: u128,
    /// L1 blob base fee (wei).
    pub blob_base_fee: u128,
    /// `baseFeeScalar`, scaled by 1e6.
    pub base_fee_scalar: u32,
    /// `blobBaseFeeScalar`, scaled by 1e6.
    pub blob_base_fee_scalar: u32,
}

impl L1FeeInputs {
    /// Scalars assumed for Base (`baseFeeScalar` 2269, `blobBaseFeeScalar` 1055762, the values
    /// published for it at Ecotone; the chain may change them: its `GasPriceOracle` has the live
    /// ones) at the given L1 fees.
    pub fn assumed_base(l1_base_fee: u128, blob_base_fee: u128) -> Self {
        L1FeeInputs {
            l1_base_fee,
            blob_base_fee,
            base_fee_scalar: 2_269,
            blob_base_fee_scalar: 1_055_762,
        }
    }
}

/// The Fjord L1 data fee (wei) of a signed, EIP-2718-encoded transaction:
/// `max(100e6, -42_585_600 + 836_500 × fastlz(tx)) × (16 × baseFeeScalar × l1BaseFee +
/// blobBaseFeeScalar × blobBaseFee) / 1e12`.
pub fn l1_fee_fjord(signed_tx: &[u8], inputs: &L1FeeInputs) -> U256 {
    // Scaled by 1e6, floored at the 100-byte minimum: op-geth's estimate, kept in one crate.
    let size_scaled = U256::from(op_alloy_flz::tx_estimated_size_fjord(signed_tx));
    let fee_scaled =
        U256::from(inputs.base_fee_scalar) * U256::from(inputs.l1_base_fee) * U256::from(16u8)
            + U256::from(inputs.blob_base_fee_scalar) * U256::from(inputs.blob_base_fee);
    size_scaled * fee_scaled / U256::from(1_000_000_000_000u64)
}

/// The FastLZ-compressed length the fee is computed from.
pub fn fastlz_len(signed_tx: &[u8]) -> u32 {
    op_alloy_flz::flz_compress_len(signed_tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_transactions_pay_for_the_100_byte_minimum() {
        let inputs = L1FeeInputs::assumed_base(1_000_000_000, 1);
        // 100 bytes × (16 × 2269 × 1 gwei + 1055762 × 1 wei) / 1e6.
        let floor = U256::from(100u64)
            * (U256::from(16u64 * 2_269 * 1_000_000_000) + U256::from(1_055_762u64))
            / U256::from(1_000_000u64);
        assert_eq!(l1_fee_fjord(&[0u8; 20], &inputs), floor);
    }

    #[test]
    fn the_fee_follows_the_compressed_size_and_both_l1_fees() {
        let inputs = L1FeeInputs::assumed_base(2_000_000_000, 5);
        // Random bytes do not compress: a kilobyte is ~1 KB on L1.
        let noise: Vec<u8> = (0..32u32)
            .flat_map(|i| alloy::primitives::keccak256(i.to_be_bytes()).0)
            .collect();
        let repeated = vec![7u8; 1024];
        assert!(fastlz_len(&noise) > 900);
        assert!(fastlz_len(&repeated) < 100);
        let big = l1_fee_fjord(&noise, &inputs);
        let expected = U256::from(836_500u64 * u64::from(fastlz_len(&noise)) - 42_585_600)
            * (U256::from(16u64 * 2_269 * 2_000_000_000) + U256::from(1_055_762u64 * 5))
            / U256::from(1_000_000_000_000u64);
        assert_eq!(big, expected);
        assert!(l1_fee_fjord(&repeated, &inputs) < big);
        let dearer = L1FeeInputs::assumed_base(4_000_000_000, 5);
        assert!(l1_fee_fjord(&noise, &dearer) > big);
    }
}
