//! Networks and tokens: which (network, asset) pairs we serve, their EIP-712 domains, and a JSON-RPC
//! client per network.

pub mod bindings;
pub mod l1fee;
pub mod rpc;
pub mod settler;
pub mod simulate;
pub mod tx;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use alloy::primitives::{Address, B256, address};
use alloy::sol_types::Eip712Domain;

use crate::config::{Config, NetworkConfig, TokenConfig};
use crate::protocol::{ChainId, X402Version};
pub use rpc::{CallError, RpcCall, RpcClient, RpcError};

/// A built-in network: chain id, v1 name, and its USDC.
struct BuiltinNetwork {
    chain_id: u64,
    v1_name: &'static str,
    usdc: Address,
    eip712_name: &'static str,
}

const BUILTIN_NETWORKS: &[BuiltinNetwork] = &[
    BuiltinNetwork {
        chain_id: 8453,
        v1_name: "base",
        usdc: address!("833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"),
        eip712_name: "USD Coin",
    },
    BuiltinNetwork {
        chain_id: 84532,
        v1_name: "base-sepolia",
        usdc: address!("036CbD53842c5426634e7929541eC2318f3dCF7e"),
        eip712_name: "USDC",
    },
];

/// The built-in USDC of a chain, if it has one: (address, EIP-712 name, version).
pub fn builtin_usdc(chain_id: u64) -> Option<(Address, &'static str, &'static str)> {
    BUILTIN_NETWORKS
        .iter()
        .find(|b| b.chain_id == chain_id)
        .map(|b| (b.usdc, b.eip712_name, "2"))
}

/// The v1 name of a built-in chain (`base`, `base-sepolia`).
pub fn builtin_v1_name(chain_id: u64) -> Option<&'static str> {
    BUILTIN_NETWORKS
        .iter()
        .find(|b| b.chain_id == chain_id)
        .map(|b| b.v1_name)
}

/// The chain id of a built-in v1 network name.
pub fn builtin_chain_of_v1_name(name: &str) -> Option<u64> {
    BUILTIN_NETWORKS
        .iter()
        .find(|b| b.v1_name == name)
        .map(|b| b.chain_id)
}

/// A token we serve (by EIP-3009, Permit2 or both).
#[derive(Debug)]
pub struct Token {
    pub address: Address,
    pub name: String,
    pub version: String,
    pub decimals: u8,
    pub symbol: String,
    pub domain: Eip712Domain,
    pub domain_separator: B256,
    /// Payments below this are refused (dust costs the operator more gas than it pays).
    pub min_amount: alloy::primitives::U256,
    /// Payments above this are refused, when set.
    pub max_amount: Option<alloy::primitives::U256>,
    /// How payers may sign for it.
    pub transfer_methods: Vec<crate::protocol::TransferMethod>,
    /// Set once the token was seen to have code: an `eth_call` to an empty account "succeeds", so
    /// we must know the token is deployed before trusting a simulation.
    deployed: AtomicBool,
}

impl Token {
    fn new(chain_id: ChainId, t: &TokenConfig) -> Self {
        let domain = Eip712Domain::new(
            Some(t.name.clone().into()),
            Some(t.version.clone().into()),
            Some(alloy::primitives::U256::from(chain_id.0)),
            Some(t.address),
            None,
        );
        Token {
            address: t.address,
            name: t.name.clone(),
            version: t.version.clone(),
            decimals: t.decimals,
            symbol: t.symbol.clone().unwrap_or_else(|| t.name.clone()),
            domain_separator: domain.separator(),
            domain,
            min_amount: t.min_amount.map_or_else(
                || {
                    alloy::primitives::U256::from(10u64)
                        .pow(alloy::primitives::U256::from(t.decimals))
                        / alloy::primitives::U256::from(1000u64)
                },
                |a| a.0,
            ),
            max_amount: t.max_amount.map(|a| a.0),
            transfer_methods: t.transfer_methods.clone(),
            deployed: AtomicBool::new(false),
        }
    }

    pub fn known_deployed(&self) -> bool {
        self.deployed.load(Ordering::Relaxed)
    }

    pub fn mark_deployed(&self) {
        self.deployed.store(true, Ordering::Relaxed);
    }

    pub fn accepts(&self, method: crate::protocol::TransferMethod) -> bool {
        self.transfer_methods.contains(&method)
    }
}

/// A network we serve.
#[derive(Debug)]
pub struct Network {
    pub chain_id: ChainId,
    pub v1_name: Option<String>,
    pub rpc: Arc<RpcClient>,
    /// Simulations of token calls, coalesced across concurrent requests.
    pub simulator: simulate::Simulator,
    pub tokens: Vec<Token>,
    /// Permit2 and the x402 proxies here.
    pub permit2: Permit2Addresses,
    /// Our batch-settlement contract here, if configured ([`settler`]).
    pub batch_settler: Option<Address>,
}

/// Where Permit2 and the x402 Permit2 proxies are on one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit2Addresses {
    pub permit2: Address,
    pub exact_proxy: Address,
    pub upto_proxy: Address,
}

impl Permit2Addresses {
    fn from_config(c: &crate::config::Permit2Config) -> Self {
        Permit2Addresses {
            permit2: c.address.unwrap_or(bindings::PERMIT2),
            exact_proxy: c.exact_proxy.unwrap_or(bindings::EXACT_PERMIT2_PROXY),
            upto_proxy: c.upto_proxy.unwrap_or(bindings::UPTO_PERMIT2_PROXY),
        }
    }
}

impl Network {
    pub fn token(&self, address: Address) -> Option<&Token> {
        self.tokens.iter().find(|t| t.address == address)
    }

    /// The network's name in answers of the given version.
    pub fn wire_name(&self, version: X402Version) -> String {
        match (version, &self.v1_name) {
            (X402Version::V1, Some(name)) => name.clone(),
            _ => self.chain_id.caip2(),
        }
    }
}

/// All networks we serve.
#[derive(Debug, Clone)]
pub struct Chains {
    networks: Arc<Vec<Network>>,
}

/// How long one RPC round trip may take before we call the node unreachable.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

impl Chains {
    pub fn from_config(config: &Config) -> Result<Self, RpcError> {
        Chains::from_config_with(config, None)
    }

    /// As [`Chains::from_config`], counting RPC traffic into `metrics` when given.
    pub fn from_config_with(
        config: &Config,
        metrics: Option<&crate::telemetry::Metrics>,
    ) -> Result<Self, RpcError> {
        let networks = config
            .networks
            .iter()
            .map(|n| network_from_config(n, metrics))
            .collect::<Result<Vec<_>, RpcError>>()?;
        Ok(Chains {
            networks: Arc::new(networks),
        })
    }

    pub fn networks(&self) -> &[Network] {
        &self.networks
    }

    /// Finds a served network by its wire name: CAIP-2 in v2, the v1 name in v1.
    pub fn resolve(&self, version: X402Version, name: &str) -> Option<&Network> {
        match version {
            X402Version::V2 => {
                let id = ChainId::from_caip2(name)?;
                self.networks.iter().find(|n| n.chain_id == id)
            }
            X402Version::V1 => self
                .networks
                .iter()
                .find(|n| n.v1_name.as_deref() == Some(name)),
        }
    }
}

fn network_from_config(
    n: &NetworkConfig,
    metrics: Option<&crate::telemetry::Metrics>,
) -> Result<Network, RpcError> {
    let chain_id = ChainId(n.chain_id);
    let builtin = BUILTIN_NETWORKS.iter().find(|b| b.chain_id == n.chain_id);
    let mut token_configs = Vec::new();
    if n.builtin_tokens
        && let Some(b) = builtin
    {
        token_configs.push(TokenConfig {
            address: b.usdc,
            name: b.eip712_name.to_owned(),
            version: "2".to_owned(),
            decimals: 6,
            symbol: Some("USDC".to_owned()),
            min_amount: None,
            max_amount: None,
            transfer_methods: vec![
                crate::protocol::TransferMethod::Eip3009,
                crate::protocol::TransferMethod::Permit2,
            ],
        });
    }
    for t in &n.tokens {
        token_configs.retain(|c| c.address != t.address);
        token_configs.push(t.clone());
    }
    let mut rpc = RpcClient::new(&n.rpc_urls, RPC_TIMEOUT)?;
    if let Some(m) = metrics {
        rpc.instrument(m);
    }
    let rpc = Arc::new(rpc);
    Ok(Network {
        chain_id,
        simulator: simulate::Simulator::new(rpc.clone()),
        v1_name: n
            .v1_name
            .clone()
            .or_else(|| builtin.map(|b| b.v1_name.to_owned())),
        rpc,
        tokens: token_configs
            .iter()
            .map(|t| Token::new(chain_id, t))
            .collect(),
        permit2: Permit2Addresses::from_config(&n.permit2),
        batch_settler: n.batch_settler,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::b256;

    #[test]
    fn builtin_domain_separators_match_the_facts() {
        let config = Config::from_toml(
            "[[networks]]\nchain_id = 8453\nrpc_urls = [\"http://127.0.0.1:1\"]\n[[networks]]\nchain_id = 84532\nrpc_urls = [\"http://127.0.0.1:1\"]\n",
            &Default::default(),
        )
        .unwrap();
        let chains = Chains::from_config(&config).unwrap();
        let base = chains.resolve(X402Version::V2, "eip155:8453").unwrap();
        assert_eq!(
            base.tokens[0].domain_separator,
            b256!("02fa7265e7c5d81118673727957699e4d68f74cd74b7db77da710fe8a2c7834f")
        );
        let sepolia = chains.resolve(X402Version::V1, "base-sepolia").unwrap();
        assert_eq!(
            sepolia.tokens[0].domain_separator,
            b256!("71f17a3b2ff373b803d70a5a07c046c1a2bc8e89c09ef722fcb047abe94c9818")
        );
        assert!(chains.resolve(X402Version::V2, "eip155:1").is_none());
        assert!(chains.resolve(X402Version::V1, "eip155:8453").is_none());
    }
}
