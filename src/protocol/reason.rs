//! Reason codes, and the one table that names them on the wire for each protocol version.

use super::X402Version;

/// Why a payment was refused or a settlement did not succeed. Mapped to wire names only by
/// [`Reason::wire_name`]; nothing else in the crate spells a reason string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The scheme is not `exact`, or the payload and requirements name different schemes.
    InvalidScheme,
    /// The payload is for another network than the requirements.
    NetworkMismatch,
    /// A network we do not serve.
    UnsupportedNetwork,
    /// An asset we do not serve on that network.
    UnsupportedAsset,
    /// `extra.name` or `extra.version` missing.
    MissingEip712Domain,
    TokenNameMismatch,
    TokenVersionMismatch,
    RecipientMismatch,
    AuthorizationValueMismatch,
    ValidBeforeTooSoon,
    /// `validBefore` beyond the facilitator's horizon (it would hold the key for too long).
    ValidBeforeTooFar,
    ValidAfterInFuture,
    /// Below the token's minimum payment (dust).
    AmountBelowMinimum,
    /// Above the token's maximum payment.
    AmountAboveMaximum,
    /// `payTo` outside the facilitator's allowlist.
    PayToNotAllowed,
    InvalidSignature,
    UndeployedSmartWallet,
    NonceAlreadyUsed,
    InsufficientBalance,
    Eip3009NotSupported,
    SimulationFailed,
    TransactionFailed,
    /// Mined, but the receipt's `Transfer(from, payTo, value)` is missing or moved another amount
    /// (a fee-on-transfer token, say): never reported as a successful payment.
    TransferEventMismatch,
    AssetNotDeployed,
    Eip6492FactoryNotAllowed,
    SmartWalletDeploymentFailed,
    SettlementPending,
    UnsupportedPayloadType,
    /// Permit2: the payer has not approved Permit2 for the token (or not enough).
    Permit2AllowanceRequired,
    /// Permit2: the signed spender is not the proxy of the scheme.
    Permit2InvalidSpender,
    /// Permit2: the permitted token is not the required asset.
    Permit2TokenMismatch,
    /// Permit2: the witness pays someone other than `payTo`.
    Permit2RecipientMismatch,
    /// Permit2: the permitted amount is not what the requirements ask (exact: equal; upto: at
    /// least the maximum asked at verify time).
    Permit2AmountMismatch,
    Permit2DeadlineExpired,
    Permit2NotYetValid,
    /// Permit2: the nonce's bit is already set for the payer.
    Permit2NonceUsed,
    Permit2InvalidSignature,
    /// upto: the amount to settle is above the authorised maximum.
    UptoSettlementExceedsAmount,
    /// upto: the witness binds a facilitator address that is not one of ours.
    UptoFacilitatorMismatch,
}

impl Reason {
    /// Every reason, for documentation and exhaustive tests.
    pub const ALL: &'static [Reason] = &[
        Reason::InvalidScheme,
        Reason::NetworkMismatch,
        Reason::UnsupportedNetwork,
        Reason::UnsupportedAsset,
        Reason::MissingEip712Domain,
        Reason::TokenNameMismatch,
        Reason::TokenVersionMismatch,
        Reason::RecipientMismatch,
        Reason::AuthorizationValueMismatch,
        Reason::ValidBeforeTooSoon,
        Reason::ValidBeforeTooFar,
        Reason::ValidAfterInFuture,
        Reason::AmountBelowMinimum,
        Reason::AmountAboveMaximum,
        Reason::PayToNotAllowed,
        Reason::InvalidSignature,
        Reason::UndeployedSmartWallet,
        Reason::NonceAlreadyUsed,
        Reason::InsufficientBalance,
        Reason::Eip3009NotSupported,
        Reason::SimulationFailed,
        Reason::TransactionFailed,
        Reason::TransferEventMismatch,
        Reason::AssetNotDeployed,
        Reason::Eip6492FactoryNotAllowed,
        Reason::SmartWalletDeploymentFailed,
        Reason::SettlementPending,
        Reason::UnsupportedPayloadType,
        Reason::Permit2AllowanceRequired,
        Reason::Permit2InvalidSpender,
        Reason::Permit2TokenMismatch,
        Reason::Permit2RecipientMismatch,
        Reason::Permit2AmountMismatch,
        Reason::Permit2DeadlineExpired,
        Reason::Permit2NotYetValid,
        Reason::Permit2NonceUsed,
        Reason::Permit2InvalidSignature,
        Reason::UptoSettlementExceedsAmount,
        Reason::UptoFacilitatorMismatch,
    ];

    /// The name on the wire: v2 answers use the TypeScript/Go names, v1 answers the spec v1 names
    /// where the v1 spec has one.
    pub fn wire_name(self, version: X402Version) -> &'static str {
        let (v2, v1) = self.names();
        match version {
            X402Version::V2 => v2,
            X402Version::V1 => v1,
        }
    }

    /// The stable code we store: the v2 name.
    pub fn code(self) -> &'static str {
        self.names().0
    }

    /// The reason whose [`Reason::code`] is `code`.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL
            .iter()
            .copied()
            .find(|r| r.code() == code)
            .or_else(|| Reason::from_former_code(code))
    }

    /// Codes stored by earlier versions under a v2 name that has since changed.
    fn from_former_code(code: &str) -> Option<Reason> {
        match code {
            "invalid_exact_evm_authorization_value" => Some(Reason::AuthorizationValueMismatch),
            _ => None,
        }
    }

    /// (v2 name, v1 name).
    fn names(self) -> (&'static str, &'static str) {
        use Reason::*;
        match self {
            InvalidScheme => ("invalid_exact_evm_scheme", "invalid_scheme"),
            NetworkMismatch => ("invalid_exact_evm_network_mismatch", "invalid_network"),
            UnsupportedNetwork => ("invalid_network", "invalid_network"),
            UnsupportedAsset => (
                "invalid_payment_requirements",
                "invalid_payment_requirements",
            ),
            MissingEip712Domain => (
                "invalid_exact_evm_missing_eip712_domain",
                "invalid_payment_requirements",
            ),
            TokenNameMismatch => (
                "invalid_exact_evm_token_name_mismatch",
                "invalid_payment_requirements",
            ),
            TokenVersionMismatch => (
                "invalid_exact_evm_token_version_mismatch",
                "invalid_payment_requirements",
            ),
            RecipientMismatch => (
                "invalid_exact_evm_recipient_mismatch",
                "invalid_exact_evm_payload_recipient_mismatch",
            ),
            // The v2 name since the exact-amount change (older TypeScript said
            // `invalid_exact_evm_authorization_value`; `from_code` still reads that).
            AuthorizationValueMismatch => (
                "invalid_exact_evm_payload_authorization_value_mismatch",
                "invalid_exact_evm_payload_authorization_value",
            ),
            ValidBeforeTooSoon => (
                "invalid_exact_evm_payload_authorization_valid_before",
                "invalid_exact_evm_payload_authorization_valid_before",
            ),
            ValidBeforeTooFar => (
                "invalid_exact_evm_payload_authorization_valid_before_too_far",
                "invalid_exact_evm_payload_authorization_valid_before",
            ),
            AmountBelowMinimum => ("amount_below_minimum", "invalid_payment_requirements"),
            AmountAboveMaximum => ("amount_above_maximum", "invalid_payment_requirements"),
            PayToNotAllowed => ("pay_to_not_allowed", "invalid_payment_requirements"),
            ValidAfterInFuture => (
                "invalid_exact_evm_payload_authorization_valid_after",
                "invalid_exact_evm_payload_authorization_valid_after",
            ),
            InvalidSignature => (
                "invalid_exact_evm_signature",
                "invalid_exact_evm_payload_signature",
            ),
            UndeployedSmartWallet => (
                "invalid_exact_evm_payload_undeployed_smart_wallet",
                "invalid_exact_evm_payload_undeployed_smart_wallet",
            ),
            NonceAlreadyUsed => (
                "invalid_exact_evm_nonce_already_used",
                "invalid_transaction_state",
            ),
            InsufficientBalance => (
                "invalid_exact_evm_insufficient_balance",
                "insufficient_funds",
            ),
            Eip3009NotSupported => (
                "invalid_exact_evm_eip3009_not_supported",
                "invalid_payment_requirements",
            ),
            SimulationFailed => (
                "invalid_exact_evm_transaction_simulation_failed",
                "invalid_transaction_state",
            ),
            TransactionFailed => (
                "invalid_exact_evm_transaction_failed",
                "invalid_transaction_state",
            ),
            TransferEventMismatch => (
                "invalid_exact_evm_transfer_event_mismatch",
                "invalid_transaction_state",
            ),
            AssetNotDeployed => (
                "asset_not_deployed_contract",
                "invalid_payment_requirements",
            ),
            Eip6492FactoryNotAllowed => {
                ("eip6492_factory_not_allowed", "eip6492_factory_not_allowed")
            }
            SmartWalletDeploymentFailed => (
                "smart_wallet_deployment_failed",
                "smart_wallet_deployment_failed",
            ),
            SettlementPending => ("settlement_pending", "settlement_pending"),
            UnsupportedPayloadType => ("unsupported_payload_type", "invalid_payload"),
            Permit2AllowanceRequired => {
                ("permit2_allowance_required", "permit2_allowance_required")
            }
            Permit2InvalidSpender => ("invalid_permit2_spender", "invalid_payload"),
            Permit2TokenMismatch => ("permit2_token_mismatch", "invalid_payment_requirements"),
            Permit2RecipientMismatch => (
                "invalid_permit2_recipient_mismatch",
                "invalid_exact_evm_payload_recipient_mismatch",
            ),
            Permit2AmountMismatch => (
                "permit2_insufficient_amount",
                "invalid_exact_evm_payload_authorization_value",
            ),
            Permit2DeadlineExpired => (
                "permit2_deadline_expired",
                "invalid_exact_evm_payload_authorization_valid_before",
            ),
            Permit2NotYetValid => (
                "permit2_not_yet_valid",
                "invalid_exact_evm_payload_authorization_valid_after",
            ),
            Permit2NonceUsed => ("permit2_invalid_nonce", "invalid_transaction_state"),
            Permit2InvalidSignature => (
                "invalid_permit2_signature",
                "invalid_exact_evm_payload_signature",
            ),
            UptoSettlementExceedsAmount => (
                "invalid_upto_evm_payload_settlement_exceeds_amount",
                "invalid_upto_evm_payload_settlement_exceeds_amount",
            ),
            UptoFacilitatorMismatch => (
                "invalid_upto_evm_payload_facilitator_mismatch",
                "invalid_upto_evm_payload_facilitator_mismatch",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_names_are_distinct() {
        let mut names: Vec<_> = Reason::ALL
            .iter()
            .map(|r| r.wire_name(X402Version::V2))
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
    }

    #[test]
    fn the_documented_table_matches_the_code() {
        let doc = include_str!("../../docs/reason-codes.md");
        for r in Reason::ALL {
            let row = format!(
                "| `{}` | `{}` |",
                r.wire_name(X402Version::V2),
                r.wire_name(X402Version::V1)
            );
            assert!(doc.contains(&row), "docs/reason-codes.md lacks {row}");
        }
    }

    #[test]
    fn codes_stored_by_earlier_versions_still_read() {
        assert_eq!(
            Reason::from_code("invalid_exact_evm_authorization_value"),
            Some(Reason::AuthorizationValueMismatch)
        );
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Some(*r));
        }
    }

    #[test]
    fn clients_rely_on_settlement_pending() {
        for v in [X402Version::V1, X402Version::V2] {
            assert_eq!(Reason::SettlementPending.wire_name(v), "settlement_pending");
        }
    }
}
