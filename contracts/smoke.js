#!/usr/bin/env node
// Developer smoke test of the compiled artifacts against a running anvil (not part of CI).
//   anvil --port 8599 --chain-id 84532 &   node contracts/smoke.js http://127.0.0.1:8599
// It starts nothing itself. Uses anvil's default funded key #0 as owner/submitter.
'use strict';

const path = require('path');
const assert = require('assert');
const { ethers } = require('ethers');

const url = process.argv[2] || process.env.RPC_URL || 'http://127.0.0.1:8599';
const out = path.join(__dirname, 'out');
const art = (n) => require(path.join(out, `${n}.json`));
// anvil's well-known dev key #0 (test mnemonic "test test ... junk")
const ANVIL_KEY0 = '0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80';

const TWA_TYPES = {
  TransferWithAuthorization: [
    { name: 'from', type: 'address' },
    { name: 'to', type: 'address' },
    { name: 'value', type: 'uint256' },
    { name: 'validAfter', type: 'uint256' },
    { name: 'validBefore', type: 'uint256' },
    { name: 'nonce', type: 'bytes32' },
  ],
};
const CANCEL_TYPES = {
  CancelAuthorization: [
    { name: 'authorizer', type: 'address' },
    { name: 'nonce', type: 'bytes32' },
  ],
};
const SIG_VRS = 'transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)';
const SIG_BYTES = 'transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)';

let passed = 0;
function ok(msg) {
  passed++;
  console.log(`ok ${passed} - ${msg}`);
}

async function expectRevert(promise, reason, what) {
  try {
    await promise;
  } catch (e) {
    const got = e.reason || e.revert?.args?.[0] || e.shortMessage || e.message;
    assert.strictEqual(got, reason, `${what}: expected revert "${reason}", got "${got}"`);
    ok(`${what} reverts with "${reason}"`);
    return;
  }
  throw new Error(`${what}: expected revert "${reason}" but it succeeded`);
}

async function deploy(name, signer, ...args) {
  const a = art(name);
  const f = new ethers.ContractFactory(a.abi, a.bytecode, signer);
  const c = await f.deploy(...args);
  await c.waitForDeployment();
  return c;
}

async function main() {
  const provider = new ethers.JsonRpcProvider(url, undefined, { staticNetwork: true, pollingInterval: 50, cacheTimeout: -1 });
  const { chainId } = await provider.getNetwork();
  // plain Wallet (not NonceManager): a failed send would burn a nonce and stall later txs
  const owner = new ethers.Wallet(ANVIL_KEY0, provider);
  const ownerAddr = await owner.getAddress();
  const payer = ethers.Wallet.createRandom();
  const payee = ethers.Wallet.createRandom().address;
  console.log(`# rpc ${url} chainId ${chainId}`);

  // --- ABI / selectors ---
  const usdcArt = art('TestUSDC');
  const iface = new ethers.Interface(usdcArt.abi);
  const sel = (s) => iface.getFunction(s).selector;
  assert.strictEqual(sel(SIG_VRS), '0xe3ee160e');
  assert.strictEqual(sel(SIG_BYTES), '0xcf092995');
  assert.strictEqual(sel('authorizationState(address,bytes32)'), '0xe94a0102');
  assert.strictEqual(sel('cancelAuthorization(address,bytes32,uint8,bytes32,bytes32)'), '0x5a049a70');
  assert.strictEqual(sel('cancelAuthorization(address,bytes32,bytes)'), '0xb7b72899');
  assert.strictEqual(sel('receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)'), '0xef55bec6');
  assert.strictEqual(iface.getEvent('AuthorizationUsed').topicHash, '0x98de503528ee59b575ef0c0a2576a82497bfc029a5685b209e9ec333479b10a5');
  assert.strictEqual(iface.getEvent('AuthorizationCanceled').topicHash, '0x1cdd46ff242716cdaa72d159d339a485b3438398348d68f09d7c8c0a59353d81');
  ok('selectors and event topics match FiatToken V2_2');

  // --- deploy + initialize ---
  const usdc = await deploy('TestUSDC', owner);
  const usdcAddr = await usdc.getAddress();
  await (await usdc.initialize('USDC', 'USDC', '2', 6, ownerAddr)).wait();
  assert.strictEqual(await usdc.name(), 'USDC');
  assert.strictEqual(await usdc.version(), '2');
  assert.strictEqual(await usdc.decimals(), 6n);
  assert.strictEqual(await usdc.owner(), ownerAddr);
  ok(`TestUSDC deployed at ${usdcAddr} and initialized`);
  await expectRevert(usdc.initialize('X', 'X', '1', 6, ownerAddr), 'FiatToken: contract is already initialized', 'second initialize');

  const domain = { name: 'USDC', version: '2', chainId, verifyingContract: usdcAddr };
  assert.strictEqual(await usdc.DOMAIN_SEPARATOR(), ethers.TypedDataEncoder.hashDomain(domain));
  assert.strictEqual(await usdc.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(), ethers.id('TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)'));
  ok('DOMAIN_SEPARATOR equals the EIP-712 domain hash');

  await (await usdc.mint(payer.address, 10_000_000n)).wait();
  assert.strictEqual(await usdc.balanceOf(payer.address), 10_000_000n);
  ok('mint');

  const now = BigInt((await provider.getBlock('latest')).timestamp);
  const auth = (from, value) => ({
    from, to: payee, value, validAfter: 0n, validBefore: now + 3600n, nonce: ethers.hexlify(ethers.randomBytes(32)),
  });
  const args = (m) => [m.from, m.to, m.value, m.validAfter, m.validBefore, m.nonce];

  // --- v,r,s overload ---
  const m1 = auth(payer.address, 1_000_000n);
  const s1 = ethers.Signature.from(await payer.signTypedData(domain, TWA_TYPES, m1));
  const rc1 = await (await usdc[SIG_VRS](...args(m1), s1.v, s1.r, s1.s)).wait();
  const names = rc1.logs.map((l) => iface.parseLog(l).name);
  assert.deepStrictEqual(names, ['AuthorizationUsed', 'Transfer']);
  const used = iface.parseLog(rc1.logs[0]);
  assert.strictEqual(used.args.authorizer, payer.address);
  assert.strictEqual(used.args.nonce, m1.nonce);
  assert.strictEqual(await usdc.balanceOf(payee), 1_000_000n);
  assert.strictEqual(await usdc.authorizationState(payer.address, m1.nonce), true);
  ok('transferWithAuthorization (v,r,s) moves funds and emits AuthorizationUsed then Transfer');

  await expectRevert(usdc[SIG_VRS](...args(m1), s1.v, s1.r, s1.s), 'FiatTokenV2: authorization is used or canceled', 'reused nonce (v,r,s)');
  await expectRevert(usdc[SIG_BYTES](...args(m1), s1.serialized), 'FiatTokenV2: authorization is used or canceled', 'reused nonce (bytes)');

  // --- bytes overload ---
  const m2 = auth(payer.address, 2_000_000n);
  const sig2 = await payer.signTypedData(domain, TWA_TYPES, m2);
  assert.strictEqual(ethers.getBytes(sig2).length, 65);
  const rc2 = await (await usdc[SIG_BYTES](...args(m2), sig2)).wait();
  assert.deepStrictEqual(rc2.logs.map((l) => iface.parseLog(l).name), ['AuthorizationUsed', 'Transfer']);
  assert.strictEqual(await usdc.balanceOf(payee), 3_000_000n);
  assert.strictEqual(await usdc.balanceOf(payer.address), 7_000_000n);
  ok('transferWithAuthorization (bytes) moves funds');

  // --- revert strings and order ---
  const m3 = auth(payer.address, 1n);
  const sig3 = ethers.Signature.from(await payer.signTypedData(domain, TWA_TYPES, m3));
  const other = ethers.Wallet.createRandom();
  await expectRevert(usdc[SIG_BYTES](...args(m3), await other.signTypedData(domain, TWA_TYPES, m3)), 'FiatTokenV2: invalid signature', 'signature by another key');
  await expectRevert(usdc[SIG_BYTES](...args(m3), '0x1234'), 'ECRecover: invalid signature length', 'short signature');
  const highS = ethers.toBeHex(ethers.N - BigInt(sig3.s), 32);
  await expectRevert(usdc[SIG_VRS](...args(m3), sig3.v, sig3.r, highS), "ECRecover: invalid signature 's' value", 'high-s signature');
  await expectRevert(usdc[SIG_VRS](...args(m3), 29, sig3.r, sig3.s), "ECRecover: invalid signature 'v' value", 'v=29');
  await expectRevert(usdc[SIG_BYTES](m3.from, m3.to, m3.value, now + 10_000n, m3.validBefore, m3.nonce, sig3.serialized), 'FiatTokenV2: authorization is not yet valid', 'validAfter in the future');
  await expectRevert(usdc[SIG_BYTES](m3.from, m3.to, m3.value, 0n, now - 1n, m3.nonce, sig3.serialized), 'FiatTokenV2: authorization is expired', 'validBefore in the past');
  const big = auth(payer.address, 1_000_000_000n);
  await expectRevert(usdc[SIG_BYTES](...args(big), await payer.signTypedData(domain, TWA_TYPES, big)), 'ERC20: transfer amount exceeds balance', 'value above balance');
  await expectRevert(usdc['receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)'](...args(m3), sig3.serialized), 'FiatTokenV2: caller must be the payee', 'receiveWithAuthorization by non-payee');
  await (await usdc.blacklist(payee)).wait();
  await expectRevert(usdc[SIG_BYTES](...args(m3), sig3.serialized), 'Blacklistable: account is blacklisted', 'blacklisted payee');
  await (await usdc.pause()).wait();
  await expectRevert(usdc[SIG_BYTES](...args(m3), sig3.serialized), 'Pausable: paused', 'paused (checked before blacklist)');
  await (await usdc.unpause()).wait();
  await (await usdc.unBlacklist(payee)).wait();

  // --- cancelAuthorization ---
  const sc = await payer.signTypedData(domain, CANCEL_TYPES, { authorizer: payer.address, nonce: m3.nonce });
  const rcc = await (await usdc['cancelAuthorization(address,bytes32,bytes)'](payer.address, m3.nonce, sc)).wait();
  assert.strictEqual(iface.parseLog(rcc.logs[0]).name, 'AuthorizationCanceled');
  ok('cancelAuthorization (bytes) emits AuthorizationCanceled');
  await expectRevert(usdc[SIG_BYTES](...args(m3), sig3.serialized), 'FiatTokenV2: authorization is used or canceled', 'canceled nonce');

  // --- ERC-1271 smart wallet via factory ---
  const factory = await deploy('WalletFactory', owner);
  const walletOwner = ethers.Wallet.createRandom();
  const salt = ethers.ZeroHash;
  // NB: ethers v6 BaseContract.getAddress() shadows the contract's getAddress(address,bytes32)
  const predicted = await factory.getFunction('getAddress(address,bytes32)')(walletOwner.address, salt);
  const rcf = await (await factory.createAccount(walletOwner.address, salt)).wait();
  const created = factory.interface.parseLog(rcf.logs[0]);
  assert.strictEqual(created.name, 'AccountCreated');
  assert.strictEqual(created.args.account, predicted);
  assert.strictEqual(created.args.owner, walletOwner.address);
  assert.notStrictEqual(await provider.getCode(predicted), '0x');
  const rcf2 = await (await factory.createAccount(walletOwner.address, salt)).wait();
  assert.strictEqual(rcf2.logs.length, 0);
  assert.strictEqual(await factory.createAccount.staticCall(walletOwner.address, salt), predicted);
  const wallet = new ethers.Contract(predicted, art('SmartWallet').abi, provider);
  assert.strictEqual(await wallet.owner(), walletOwner.address);
  ok(`WalletFactory.createAccount deploys SmartWallet at the predicted ${predicted} and is idempotent`);

  await (await usdc.mint(predicted, 5_000_000n)).wait();
  const m4 = auth(predicted, 1_500_000n);
  const digest = ethers.TypedDataEncoder.hash(domain, TWA_TYPES, m4);
  const rawSig = walletOwner.signingKey.sign(digest).serialized; // raw digest, no prefix
  assert.strictEqual(await wallet.isValidSignature(digest, rawSig), '0x1626ba7e');
  assert.strictEqual(await wallet.isValidSignature(digest, other.signingKey.sign(digest).serialized), '0xffffffff');
  assert.strictEqual(await wallet.isValidSignature(digest, '0x'), '0xffffffff');
  await expectRevert(usdc[SIG_BYTES](...args(m4), other.signingKey.sign(digest).serialized), 'FiatTokenV2: invalid signature', 'smart wallet: signature by a non-owner');
  await expectRevert(usdc[SIG_BYTES](...args(m4), '0x'), 'FiatTokenV2: invalid signature', 'smart wallet: empty signature (no ECRecover path)');
  const rc4 = await (await usdc[SIG_BYTES](...args(m4), rawSig)).wait();
  assert.deepStrictEqual(rc4.logs.map((l) => iface.parseLog(l).name), ['AuthorizationUsed', 'Transfer']);
  assert.strictEqual(await usdc.balanceOf(predicted), 3_500_000n);
  assert.strictEqual(await usdc.balanceOf(payee), 4_500_000n);
  ok('SmartWallet pays through the bytes overload (ERC-1271)');

  // --- runtime code placed at a canonical address with anvil_setCode (no constructor ran) ---
  const CANON = '0x036CbD53842c5426634e7929541eC2318f3dCF7e'; // USDC on Base Sepolia
  await provider.send('anvil_setCode', [CANON, usdcArt.deployedBytecode]);
  const placed = new ethers.Contract(CANON, usdcArt.abi, owner);
  assert.strictEqual(await placed.name(), '');
  await (await placed.initialize('USDC', 'USDC', '2', 6, ownerAddr)).wait();
  const cdomain = { name: 'USDC', version: '2', chainId, verifyingContract: CANON };
  assert.strictEqual(await placed.DOMAIN_SEPARATOR(), ethers.TypedDataEncoder.hashDomain(cdomain));
  await (await placed.mint(payer.address, 1_000_000n)).wait();
  const m5 = auth(payer.address, 250_000n);
  await (await placed[SIG_BYTES](...args(m5), await payer.signTypedData(cdomain, TWA_TYPES, m5))).wait();
  assert.strictEqual(await placed.balanceOf(payer.address), 750_000n);
  ok(`anvil_setCode at ${CANON} + initialize + transferWithAuthorization`);

  console.log(`${passed} passed, 0 failed`);
}

main().catch((e) => {
  console.error(e);
  console.log(`${passed} passed, 1 failed`);
  process.exit(1);
});
