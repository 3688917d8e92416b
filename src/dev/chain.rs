//! A local chain that looks like Base or Base Sepolia: anvil with our test USDC at the canonical
//! USDC address, Multicall3, Permit2 and the x402 Permit2 proxies at their canonical addresses, so
//! the built-in network configuration works unchanged, plus a plain ERC-20 (no EIP-3009) for
//! Permit2 payments. Used by the tests, the benchmarks and `x402d dev`.

use std::path::PathBuf;

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::ext::AnvilApi;
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;

use crate::chain::bindings::{
    EXACT_PERMIT2_PROXY, IErc20, MULTICALL3, PERMIT2, UPTO_PERMIT2_PROXY,
};
use crate::chain::builtin_usdc;

alloy::sol! {
    /// The admin surface of our test token (contracts/src/TestUSDC.sol).
    interface ITestUsdc {
        function initialize(string tokenName, string tokenSymbol, string tokenVersion, uint8 tokenDecimals, address newOwner) external;
        function mint(address to, uint256 amount) external;
        function pause() external;
        function unpause() external;
        function blacklist(address account) external;
        function balanceOf(address account) external view returns (uint256);
        function DOMAIN_SEPARATOR() external view returns (bytes32);
    }

    /// contracts/src/WalletFactory.sol.
    interface IWalletFactory {
        function createAccount(address owner, bytes32 salt) external returns (address);
        function getAddress(address owner, bytes32 salt) external view returns (address);
    }
}

/// Compiled artifacts of our contracts (contracts/out, rebuilt and checked by contracts/check.sh).
pub mod artifacts {
    pub const TEST_USDC: &str = include_str!("../../contracts/out/TestUSDC.json");
    pub const SMART_WALLET: &str = include_str!("../../contracts/out/SmartWallet.json");
    pub const WALLET_FACTORY: &str = include_str!("../../contracts/out/WalletFactory.json");
    /// TestUSDC keeping 1 % of every transfer: the payee gets less than was signed for.
    pub const FEE_ON_TRANSFER_USDC: &str =
        include_str!("../../contracts/out/FeeOnTransferUSDC.json");
    /// A plain ERC-20 without EIP-3009 ("Test Token", TT, 6 decimals), paid through Permit2.
    pub const TEST_TOKEN: &str = include_str!("../../contracts/out/TestToken.json");
    /// Our Permit2 SignatureTransfer stand-in, placed at the canonical Permit2 address.
    pub const PERMIT2: &str = include_str!("../../contracts/out/Permit2.json");
    /// The x402 exact Permit2 proxy, placed at its SDK address.
    pub const EXACT_PERMIT2_PROXY: &str =
        include_str!("../../contracts/out/X402ExactPermit2Proxy.json");
    /// The x402 upto Permit2 proxy, placed at its SDK address.
    pub const UPTO_PERMIT2_PROXY: &str =
        include_str!("../../contracts/out/X402UptoPermit2Proxy.json");
}

#[derive(Debug, thiserror::Error)]
pub enum DevChainError {
    #[error("anvil: {0}")]
    Anvil(String),
    #[error("contract artifact: {0}")]
    Artifact(String),
    #[error("chain: {0}")]
    Chain(String),
}

pub(super) fn chain_err(e: impl std::fmt::Display) -> DevChainError {
    DevChainError::Chain(e.to_string())
}

/// What [`DevChain::plain_token`] says of itself (contracts/src/TestToken.sol).
pub const PLAIN_TOKEN_NAME: &str = "Test Token";
pub const PLAIN_TOKEN_SYMBOL: &str = "TT";
pub const PLAIN_TOKEN_DECIMALS: u8 = 6;

/// ETH given to a payer without any before it sends its own approval (0.1 ETH: thousands of
/// approvals at anvil's fees).
const PAYER_GAS_WEI: u128 = 100_000_000_000_000_000;

/// Where the pinned anvil lives inside the repository's `anvil/` directory.
const PINNED_ANVIL: &str = "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil";

/// The anvil binary: `$ANVIL_BIN`, else the pinned copy in the repository's
/// `anvil/node_modules`, installed on first use by `anvil/install.sh` (the one implementation of
/// the install: `npm ci` of `anvil/package-lock.json`). Progress goes to stderr. No `anvil` from
/// the PATH is used: only the pinned version is known to behave as the tests expect.
///
/// # Errors
/// When the repository's `anvil/` directory cannot be found (see [`anvil_dir`]), npm is missing,
/// or the install fails.
pub fn anvil_binary() -> Result<PathBuf, DevChainError> {
    if let Some(p) = std::env::var_os("ANVIL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let dir = anvil_dir()?;
    let pinned = dir.join(PINNED_ANVIL);
    if pinned.is_file() {
        return Ok(pinned);
    }
    // One install at a time in this process (tests start chains concurrently).
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if pinned.is_file() {
        return Ok(pinned);
    }
    install_anvil(&dir)
}

/// The repository's `anvil/` directory (it holds `install.sh` and the pinned `package-lock.json`):
/// `$X402D_HOME/anvil`, else the nearest `anvil/` of the current directory or one of its parents
/// (so `cargo run -- dev` works from any clone, wherever it was built), else the one of the
/// checkout this binary was built from.
///
/// # Errors
/// When none of these holds `anvil/install.sh`.
pub fn anvil_dir() -> Result<PathBuf, DevChainError> {
    let is_anvil_dir = |d: &std::path::Path| d.join("install.sh").is_file();
    if let Some(home) = std::env::var_os("X402D_HOME") {
        let dir = PathBuf::from(home).join("anvil");
        return if is_anvil_dir(&dir) {
            Ok(dir)
        } else {
            Err(DevChainError::Anvil(format!(
                "X402D_HOME: {} has no install.sh (X402D_HOME must be the x402d repository)",
                dir.display()
            )))
        };
    }
    let from_cwd = std::env::current_dir().ok().and_then(|cwd| {
        cwd.ancestors()
            .map(|d| d.join("anvil"))
            .find(|d| is_anvil_dir(d))
    });
    let built_from = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("anvil");
    from_cwd
        .or_else(|| is_anvil_dir(&built_from).then_some(built_from))
        .ok_or_else(|| {
            DevChainError::Anvil(
                "cannot find the x402d repository's anvil/install.sh: run from the repository, \
                 set X402D_HOME to it, or set ANVIL_BIN"
                    .into(),
            )
        })
}

/// Runs `anvil/install.sh` (its progress and npm's go to stderr; its stdout is the binary's path).
fn install_anvil(dir: &std::path::Path) -> Result<PathBuf, DevChainError> {
    let npm_on_path = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("npm").is_file()));
    if !npm_on_path {
        return Err(DevChainError::Anvil(
            "npm is required to install anvil: apt-get install npm, or set ANVIL_BIN".into(),
        ));
    }
    let script = dir.join("install.sh");
    eprintln!(
        "x402d: anvil is not installed yet; installing the pinned anvil with {}",
        script.display()
    );
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| DevChainError::Anvil(format!("cannot run {}: {e}", script.display())))?;
    if !out.status.success() {
        return Err(DevChainError::Anvil(format!(
            "{} failed ({}, see above); or set ANVIL_BIN",
            script.display(),
            out.status
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bin = stdout
        .lines()
        .last()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            DevChainError::Anvil(format!(
                "{} printed no anvil path: {stdout:?}",
                script.display()
            ))
        })?;
    Ok(bin)
}

/// Creation bytecode of an artifact.
pub fn creation_code(artifact: &str) -> Result<Bytes, DevChainError> {
    crate::chain::settler::creation_code(artifact)
        .map_err(|e| DevChainError::Artifact(e.to_string()))
}

/// Runtime bytecode of an artifact (what `anvil_setCode` places; only right for contracts with
/// no immutables and no constructor state).
pub fn runtime_code(artifact: &str) -> Result<Bytes, DevChainError> {
    crate::chain::settler::runtime_code(artifact)
        .map_err(|e| DevChainError::Artifact(e.to_string()))
}

/// A running local chain with our contracts in place.
pub struct DevChain {
    anvil: AnvilInstance,
    provider: DynProvider,
    /// Owner of the test tokens (anvil's first account), also a funded sender.
    pub owner: PrivateKeySigner,
    pub chain_id: u64,
    /// The test USDC at the canonical address of this chain (on a fork: the real token).
    pub usdc: Address,
    pub usdc_name: String,
    pub usdc_version: String,
    pub usdc_decimals: u8,
    pub usdc_symbol: String,
    pub wallet_factory: Address,
    /// Our batch settler, at its CREATE2 address ([`crate::chain::settler`]).
    pub batch_settler: Address,
    /// A plain ERC-20 without EIP-3009 ("Test Token", TT, 6 decimals, minted by `owner`): the
    /// "any ERC-20" of Permit2 payments. Deployed at a fresh address, on a fork too.
    pub plain_token: Address,
    /// On a fork: the upstream chain and where the token keeps its balances.
    pub fork: Option<Fork>,
}

/// What a forked dev chain knows of its upstream.
#[derive(Debug, Clone)]
pub struct Fork {
    pub upstream: String,
    pub block: Option<u64>,
    pub balance_slot: super::fork::BalanceSlot,
}

impl DevChain {
    /// Starts anvil with `chain_id` (8453 or 84532 to get a canonical USDC) and sets it up.
    /// `block_time`: `None` mines each transaction at once.
    pub async fn start(chain_id: u64, block_time: Option<u64>) -> Result<DevChain, DevChainError> {
        let mut anvil = Anvil::at(anvil_binary()?).chain_id(chain_id);
        if let Some(t) = block_time {
            anvil = anvil.block_time(t);
        }
        let anvil = anvil
            .try_spawn()
            .map_err(|e| DevChainError::Anvil(e.to_string()))?;
        let owner = PrivateKeySigner::from(anvil.first_key().clone());
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(owner.clone()))
            .connect_http(anvil.endpoint_url())
            .erased();
        let (usdc, usdc_name, _) =
            builtin_usdc(chain_id).unwrap_or((Address::repeat_byte(0x0c), "USDC", "2"));
        let mut chain = DevChain {
            anvil,
            provider,
            owner,
            chain_id,
            usdc,
            usdc_name: usdc_name.to_owned(),
            usdc_version: "2".to_owned(),
            usdc_decimals: 6,
            usdc_symbol: "USDC".to_owned(),
            wallet_factory: Address::ZERO,
            batch_settler: Address::ZERO,
            plain_token: Address::ZERO,
            fork: None,
        };
        chain.place_multicall3().await?;
        chain.place_permit2().await?;
        chain.place_token(usdc, usdc_name, "2", 6).await?;
        chain.wallet_factory = chain.deploy(artifacts::WALLET_FACTORY).await?;
        chain.plain_token = chain.deploy(artifacts::TEST_TOKEN).await?;
        chain.batch_settler = chain.place_batch_settler().await?;
        Ok(chain)
    }

    /// Starts anvil forking `upstream` (at `block`, else its latest) and serves its real token:
    /// `token`, else the chain's built-in USDC. Its EIP-712 domain is read from the chain; only
    /// what is missing is added (Multicall3 if absent, our ERC-6492 wallet factory at a new
    /// address, Permit2 and the x402 Permit2 proxies where the chain has none — on Base they are
    /// deployed —, a plain ERC-20 at a new address). Nothing reaches the upstream chain: anvil only
    /// reads from it.
    pub async fn fork(
        upstream: &str,
        block: Option<u64>,
        token: Option<Address>,
    ) -> Result<DevChain, DevChainError> {
        let mut anvil = Anvil::at(anvil_binary()?).fork(upstream);
        if let Some(b) = block {
            anvil = anvil.fork_block_number(b);
        }
        let anvil = anvil
            .try_spawn()
            .map_err(|e| DevChainError::Anvil(format!("forking {upstream}: {e}")))?;
        let owner = PrivateKeySigner::from(anvil.first_key().clone());
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(owner.clone()))
            .connect_http(anvil.endpoint_url())
            .erased();
        let chain_id = provider.get_chain_id().await.map_err(chain_err)?;
        let usdc = token
            .or_else(|| builtin_usdc(chain_id).map(|(a, _, _)| a))
            .ok_or_else(|| {
                chain_err(format!(
                    "chain {chain_id} has no built-in USDC: pass --fork-token with the token's address"
                ))
            })?;
        let t = super::fork::read_token(&provider, chain_id, usdc).await?;
        let balance_slot = super::fork::probe_balance_slot(&provider, usdc).await?;
        let mut chain = DevChain {
            anvil,
            provider,
            owner,
            chain_id,
            usdc,
            usdc_name: t.name,
            usdc_version: t.version,
            usdc_decimals: t.decimals,
            usdc_symbol: t.symbol,
            wallet_factory: Address::ZERO,
            batch_settler: Address::ZERO,
            plain_token: Address::ZERO,
            fork: Some(Fork {
                upstream: upstream.to_owned(),
                block,
                balance_slot,
            }),
        };
        chain.place_multicall3().await?;
        chain.place_permit2().await?;
        chain.wallet_factory = chain.deploy(artifacts::WALLET_FACTORY).await?;
        chain.plain_token = chain.deploy(artifacts::TEST_TOKEN).await?;
        chain.batch_settler = chain.place_batch_settler().await?;
        Ok(chain)
    }

    /// Gives `account` `amount` of the chain's USDC: minted on a dev chain, written into the
    /// token's balance slot on a fork (the real token has no mint we may call).
    pub async fn fund_usdc(&self, account: Address, amount: U256) -> Result<(), DevChainError> {
        match &self.fork {
            None => self.mint(self.usdc, account, amount).await,
            Some(f) => {
                super::fork::set_token_balance(
                    &self.provider,
                    self.usdc,
                    f.balance_slot,
                    account,
                    amount,
                )
                .await
            }
        }
    }

    /// Gives `account` `amount` of `token`: the chain's USDC as [`DevChain::fund_usdc`] does, any
    /// other token by `mint` from the owner (our test tokens, [`DevChain::plain_token`]).
    pub async fn fund_token(
        &self,
        token: Address,
        account: Address,
        amount: U256,
    ) -> Result<(), DevChainError> {
        if token == self.usdc {
            return self.fund_usdc(account, amount).await;
        }
        self.mint(token, account, amount).await
    }

    /// The payer itself approves Permit2 for all of its `token` (what a wallet does once before
    /// paying any ERC-20 through Permit2). A payer without ETH is given a little for the gas.
    ///
    /// # Errors
    /// When a call fails or the approval reverts.
    pub async fn approve_permit2(
        &self,
        payer: &PrivateKeySigner,
        token: Address,
    ) -> Result<(), DevChainError> {
        let who = payer.address();
        if self
            .provider
            .get_balance(who)
            .await
            .map_err(chain_err)?
            .is_zero()
        {
            self.fund_eth(who, U256::from(PAYER_GAS_WEI)).await?;
        }
        let approve = IErc20::approveCall {
            spender: PERMIT2,
            amount: U256::MAX,
        };
        let tx = TransactionRequest::default()
            .with_to(token)
            .with_input(approve.abi_encode());
        if !self.send_from(payer, tx).await?.status() {
            return Err(chain_err(format!(
                "{who} approving Permit2 for {token} reverted"
            )));
        }
        Ok(())
    }

    /// `token.allowance(owner, spender)`.
    pub async fn allowance(
        &self,
        token: Address,
        owner: Address,
        spender: Address,
    ) -> Result<U256, DevChainError> {
        let tx = TransactionRequest::default()
            .with_to(token)
            .with_input(IErc20::allowanceCall { owner, spender }.abi_encode());
        let out = self.provider.call(tx).await.map_err(chain_err)?;
        IErc20::allowanceCall::abi_decode_returns(&out).map_err(chain_err)
    }

    pub fn rpc_url(&self) -> String {
        self.anvil.endpoint()
    }

    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// Deploys a contract from an artifact and returns its address.
    pub async fn deploy(&self, artifact: &str) -> Result<Address, DevChainError> {
        let tx = TransactionRequest::default().with_deploy_code(creation_code(artifact)?);
        let receipt = self.send(tx).await?;
        receipt
            .contract_address
            .ok_or_else(|| chain_err("deployment receipt has no contract address"))
    }

    /// Puts a freshly initialised test token at `at` (copying the runtime of a deployed one).
    pub async fn place_token(
        &self,
        at: Address,
        name: &str,
        version: &str,
        decimals: u8,
    ) -> Result<(), DevChainError> {
        self.place_token_of(artifacts::TEST_USDC, at, name, version, decimals)
            .await
    }

    /// [`DevChain::place_token`] for any artifact with TestUSDC's `initialize`.
    async fn place_token_of(
        &self,
        artifact: &str,
        at: Address,
        name: &str,
        version: &str,
        decimals: u8,
    ) -> Result<(), DevChainError> {
        let template = self.deploy(artifact).await?;
        let code = self
            .provider
            .get_code_at(template)
            .await
            .map_err(chain_err)?;
        self.provider
            .anvil_set_code(at, code)
            .await
            .map_err(chain_err)?;
        let init = ITestUsdc::initializeCall {
            tokenName: name.to_owned(),
            tokenSymbol: "USDC".to_owned(),
            tokenVersion: version.to_owned(),
            tokenDecimals: decimals,
            newOwner: self.owner.address(),
        };
        self.call(at, init.abi_encode()).await.map(|_| ())
    }

    /// Deploys another test token at a fresh address (for operator-configured tokens).
    pub async fn deploy_token(
        &self,
        name: &str,
        version: &str,
        decimals: u8,
    ) -> Result<Address, DevChainError> {
        let at = Address::random();
        self.place_token(at, name, version, decimals).await?;
        Ok(at)
    }

    /// Deploys a fee-on-transfer EIP-3009 token (1 % kept on every transfer) at a fresh address.
    pub async fn deploy_fee_on_transfer_token(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Address, DevChainError> {
        let at = Address::random();
        self.place_token_of(artifacts::FEE_ON_TRANSFER_USDC, at, name, version, 6)
            .await?;
        Ok(at)
    }

    /// Puts our Permit2 and the x402 Permit2 proxies at their canonical addresses, each only where
    /// there is no code yet (a fork of Base keeps the real ones). Their runtime code is placed as
    /// compiled: none of them has constructor state or immutables.
    async fn place_permit2(&self) -> Result<(), DevChainError> {
        for (at, artifact) in [
            (PERMIT2, artifacts::PERMIT2),
            (EXACT_PERMIT2_PROXY, artifacts::EXACT_PERMIT2_PROXY),
            (UPTO_PERMIT2_PROXY, artifacts::UPTO_PERMIT2_PROXY),
        ] {
            if !self
                .provider
                .get_code_at(at)
                .await
                .map_err(chain_err)?
                .is_empty()
            {
                continue;
            }
            self.provider
                .anvil_set_code(at, runtime_code(artifact)?)
                .await
                .map_err(chain_err)?;
        }
        Ok(())
    }

    /// Deploys our batch settler where it goes on every chain (a fork of a chain that has it
    /// keeps it), through the CREATE2 deployer anvil has by default.
    async fn place_batch_settler(&self) -> Result<Address, DevChainError> {
        use crate::chain::settler;
        let at = settler::address().map_err(chain_err)?;
        if self
            .provider
            .get_code_at(at)
            .await
            .map_err(chain_err)?
            .is_empty()
        {
            let tx = TransactionRequest::default()
                .with_to(settler::CREATE2_DEPLOYER)
                .with_input(settler::deployment_input().map_err(chain_err)?);
            self.send(tx).await?;
            if self
                .provider
                .get_code_at(at)
                .await
                .map_err(chain_err)?
                .is_empty()
            {
                return Err(chain_err("the batch settler's deployment left no code"));
            }
        }
        Ok(at)
    }

    async fn place_multicall3(&self) -> Result<(), DevChainError> {
        let existing = self
            .provider
            .get_code_at(MULTICALL3)
            .await
            .map_err(chain_err)?;
        if !existing.is_empty() {
            return Ok(());
        }
        let creation = alloy::providers::bindings::IMulticall3::BYTECODE.clone();
        let tx = TransactionRequest::default().with_deploy_code(creation);
        let deployed = self
            .send(tx)
            .await?
            .contract_address
            .ok_or_else(|| chain_err("no Multicall3 address"))?;
        let code = self
            .provider
            .get_code_at(deployed)
            .await
            .map_err(chain_err)?;
        self.provider
            .anvil_set_code(MULTICALL3, code)
            .await
            .map_err(chain_err)
    }

    /// Sends a transaction from the owner and waits for its receipt; a revert is an error.
    pub async fn call(
        &self,
        to: Address,
        data: Vec<u8>,
    ) -> Result<TransactionReceipt, DevChainError> {
        let receipt = self
            .send(TransactionRequest::default().with_to(to).with_input(data))
            .await?;
        if !receipt.status() {
            return Err(chain_err(format!("transaction to {to} reverted")));
        }
        Ok(receipt)
    }

    /// Sends a transaction from the owner and waits for its receipt, whatever its status.
    pub async fn send(&self, tx: TransactionRequest) -> Result<TransactionReceipt, DevChainError> {
        let hash = *self
            .provider
            .send_transaction(tx)
            .await
            .map_err(chain_err)?
            .tx_hash();
        self.wait_mined(hash).await
    }

    /// Sends a transaction signed by `from` (not the owner) and waits for its receipt, whatever its
    /// status. `from` pays the gas: give it ETH first ([`DevChain::fund_eth`]).
    pub async fn send_from(
        &self,
        from: &PrivateKeySigner,
        tx: TransactionRequest,
    ) -> Result<TransactionReceipt, DevChainError> {
        // A provider per sender: the chain's own provider signs only as the owner.
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(from.clone()))
            .connect_http(self.anvil.endpoint_url());
        let hash = *provider
            .send_transaction(tx.with_from(from.address()))
            .await
            .map_err(chain_err)?
            .tx_hash();
        self.wait_mined(hash).await
    }

    /// Waits for the receipt of `hash`, whatever its status.
    async fn wait_mined(&self, hash: B256) -> Result<TransactionReceipt, DevChainError> {
        // Polled by hand, and nudged: concurrent sends from one account may reach an automining
        // anvil out of nonce order; the early one waits in the pool until some later transaction
        // makes a block, and when it is the last one nothing ever does (seen as tests waiting
        // forever). A block mined after 2 s without a receipt releases it.
        let started = std::time::Instant::now();
        let deadline = started + std::time::Duration::from_secs(60);
        let mut nudge_at = started + std::time::Duration::from_secs(2);
        loop {
            if let Some(r) = self
                .provider
                .get_transaction_receipt(hash)
                .await
                .map_err(chain_err)?
            {
                return Ok(r);
            }
            let now = std::time::Instant::now();
            if now > deadline {
                return Err(chain_err(format!(
                    "transaction {hash} not mined within 60 s"
                )));
            }
            if now > nudge_at {
                self.provider.evm_mine(None).await.map_err(chain_err)?;
                nudge_at = now + std::time::Duration::from_secs(2);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn mint(
        &self,
        token: Address,
        to: Address,
        amount: U256,
    ) -> Result<(), DevChainError> {
        self.call(token, ITestUsdc::mintCall { to, amount }.abi_encode())
            .await
            .map(|_| ())
    }

    pub async fn pause(&self, token: Address) -> Result<(), DevChainError> {
        self.call(token, ITestUsdc::pauseCall {}.abi_encode())
            .await
            .map(|_| ())
    }

    pub async fn blacklist(&self, token: Address, account: Address) -> Result<(), DevChainError> {
        self.call(token, ITestUsdc::blacklistCall { account }.abi_encode())
            .await
            .map(|_| ())
    }

    pub async fn balance_of(
        &self,
        token: Address,
        account: Address,
    ) -> Result<U256, DevChainError> {
        let tx = TransactionRequest::default()
            .with_to(token)
            .with_input(ITestUsdc::balanceOfCall { account }.abi_encode());
        let out = self.provider.call(tx).await.map_err(chain_err)?;
        ITestUsdc::balanceOfCall::abi_decode_returns(&out).map_err(chain_err)
    }

    /// The address the wallet factory will deploy `owner`'s wallet to.
    pub async fn predicted_wallet(
        &self,
        factory: Address,
        owner: Address,
        salt: B256,
    ) -> Result<Address, DevChainError> {
        let tx = TransactionRequest::default()
            .with_to(factory)
            .with_input(IWalletFactory::getAddressCall { owner, salt }.abi_encode());
        let out = self.provider.call(tx).await.map_err(chain_err)?;
        IWalletFactory::getAddressCall::abi_decode_returns(&out).map_err(chain_err)
    }

    /// Deploys `owner`'s smart wallet through `factory`.
    pub async fn create_wallet(
        &self,
        factory: Address,
        owner: Address,
        salt: B256,
    ) -> Result<Address, DevChainError> {
        self.call(factory, Self::create_wallet_calldata(owner, salt).to_vec())
            .await?;
        self.predicted_wallet(factory, owner, salt).await
    }

    /// Calldata of `createAccount(owner, salt)`, as an ERC-6492 wrapper carries it.
    pub fn create_wallet_calldata(owner: Address, salt: B256) -> Bytes {
        IWalletFactory::createAccountCall { owner, salt }
            .abi_encode()
            .into()
    }

    /// Sets a balance of ETH (for gas wallets).
    pub async fn fund_eth(&self, account: Address, wei: U256) -> Result<(), DevChainError> {
        self.provider
            .anvil_set_balance(account, wei)
            .await
            .map_err(chain_err)
    }
}
