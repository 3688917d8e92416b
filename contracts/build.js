#!/usr/bin/env node
// Compiles every contracts/src/*.sol with the pinned solcjs (package.json) and writes one
// artifact per contract: <outDir>/<ContractName>.json =
//   {"contractName": ..., "abi": [...], "bytecode": "0x...", "deployedBytecode": "0x..."}
// Usage: node build.js [outDir]   (default: contracts/out)
'use strict';

const fs = require('fs');
const path = require('path');
const solc = require('solc');

const EXPECTED_SOLC = '0.8.28';
const root = __dirname;
const srcDir = path.join(root, 'src');
const outDir = path.resolve(process.argv[2] || path.join(root, 'out'));

function die(msg) {
  process.stderr.write(`build.js: ${msg}\n`);
  process.exit(1);
}

const version = solc.version();
if (!version.startsWith(EXPECTED_SOLC + '+')) {
  die(`expected solc ${EXPECTED_SOLC}, got ${version} (run build.sh / npm ci)`);
}

const files = fs.readdirSync(srcDir).filter((f) => f.endsWith('.sol')).sort();
if (files.length === 0) die(`no .sol files in ${srcDir}`);

const sources = {};
for (const f of files) {
  sources[f] = { content: fs.readFileSync(path.join(srcDir, f), 'utf8') };
}

const input = {
  language: 'Solidity',
  sources,
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: 'cancun',
    metadata: { bytecodeHash: 'none' },
    outputSelection: {
      '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] },
    },
  },
};

function findImports(p) {
  const full = path.resolve(srcDir, p);
  if (!full.startsWith(srcDir + path.sep) || !fs.existsSync(full)) {
    return { error: `import not found: ${p}` };
  }
  return { contents: fs.readFileSync(full, 'utf8') };
}

const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));

let errors = 0;
for (const d of output.errors || []) {
  const text = (d.formattedMessage || d.message || '').trimEnd();
  process.stderr.write(text + '\n');
  if (d.severity === 'error') errors++;
}
if (errors > 0) die(`${errors} compilation error(s)`);

const artifacts = new Map();
for (const file of Object.keys(output.contracts || {}).sort()) {
  for (const name of Object.keys(output.contracts[file]).sort()) {
    const c = output.contracts[file][name];
    if (artifacts.has(name)) die(`duplicate contract name ${name} (in ${file})`);
    const bytecode = c.evm.bytecode.object;
    const deployed = c.evm.deployedBytecode.object;
    if (!/^[0-9a-f]*$/.test(bytecode) || bytecode.includes('__')) {
      die(`${name}: bytecode has unlinked libraries or is not hex`);
    }
    artifacts.set(name, {
      contractName: name,
      abi: c.abi,
      bytecode: '0x' + bytecode,
      deployedBytecode: '0x' + deployed,
    });
  }
}
if (artifacts.size === 0) die('no contracts produced');

fs.mkdirSync(outDir, { recursive: true });
for (const [name, art] of artifacts) {
  const file = path.join(outDir, `${name}.json`);
  fs.writeFileSync(file, JSON.stringify(art, null, 2) + '\n');
  process.stdout.write(`wrote ${file}\n`);
}
