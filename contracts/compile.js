#!/usr/bin/env node
/*
 * Compile the Solidity contracts offline with npm `solc` (solc-js, the compiler bundled in
 * the package: nothing is downloaded) through its standard JSON interface, and write one
 * artifact per source: {compiler, settings, source_sha256, contracts: {Name: {abi, bytecode}}}.
 *
 * Usage (from the repository root; `make contracts` runs it):
 *   node contracts/compile.js [--out-dir DIR]
 *
 *   contracts/HTLC.sol                  -> mixhouse/chains/evm/htlc_artifact.json
 *   tests/data/contracts/TestTokens.sol -> tests/data/contracts/test_tokens_artifact.json
 *   tests/data/contracts/OzToken.sol    -> tests/data/contracts/oz_token_artifact.json
 *   contracts/TetherToken.sol           -> tests/data/contracts/tether_token_artifact.json
 *
 * TetherToken.sol is USDT's verified mainnet source (pragma ^0.4.17, contracts/SOURCE.md): 0.8
 * cannot compile it, so it is built by npm `solc-0.4` (an alias of solc 0.4.18, the compiler
 * Etherscan lists for the mainnet contract) with the optimizer off, and no evmVersion (0.4.18's
 * standard JSON predates that setting; its output runs on every later fork).
 *
 * Imports of `@openzeppelin/contracts/...` are read from node_modules (solc's import callback);
 * the installed version must be the exact one package.json pins, and an artifact built with
 * imports lists each imported file with its sha256 (solc's metadata hash covers them too).
 * No other import is resolved.
 *
 * With --out-dir every artifact goes into DIR under its file name instead (the test that
 * checks the committed artifacts are what the sources compile to uses it).
 *
 * The output is a pure function of the sources, the compiler version and the settings below:
 * the evmVersion is pinned (solc's default moves with each release), the bytecode's metadata
 * hash covers the source text and the settings, and the JSON is written with a fixed key
 * order, so a rebuild is byte-identical.
 */

'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const solc = require('solc');
const solc04 = require('solc-0.4');

const ROOT = path.resolve(__dirname, '..');
const EXPECTED_COMPILER = '0.8.28';
const EXPECTED_COMPILER_04 = '0.4.18';
const SETTINGS = {
  // Cancun: what Ethereum mainnet and anvil both run (PUSH0, MCOPY, transient storage).
  evmVersion: 'cancun',
  optimizer: {enabled: true, runs: 200},
  outputSelection: {'*': {'*': ['abi', 'evm.bytecode.object']}}
};
const BUILDS = [
  {source: 'contracts/HTLC.sol', out: 'mixhouse/chains/evm/htlc_artifact.json'},
  {source: 'tests/data/contracts/TestTokens.sol', out: 'tests/data/contracts/test_tokens_artifact.json'},
  {source: 'tests/data/contracts/OzToken.sol', out: 'tests/data/contracts/oz_token_artifact.json'},
  {source: 'contracts/TetherToken.sol', out: 'tests/data/contracts/tether_token_artifact.json', legacy: true}
];
// The settings of the 0.4 build: optimizer off as on the mainnet deployment.
const SETTINGS_04 = {
  optimizer: {enabled: false, runs: 200},
  outputSelection: {'*': {'*': ['abi', 'evm.bytecode.object']}}
};
const IMPORT_PACKAGE = '@openzeppelin/contracts';


function fail(message) {
  process.stderr.write(`compile.js: ${message}\n`);
  process.exit(1);
}

function sha256(text) {
  return crypto.createHash('sha256').update(text).digest('hex');
}

// The version package.json pins and the one node_modules holds must be the same: a different
// OpenZeppelin release compiles to different bytecode.
function checkImportPackage() {
  const pinned = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).dependencies[IMPORT_PACKAGE];
  const manifest = path.join(ROOT, 'node_modules', IMPORT_PACKAGE, 'package.json');
  if (!fs.existsSync(manifest))
    fail(`${IMPORT_PACKAGE} is not installed: run \`npm install\``);
  const installed = JSON.parse(fs.readFileSync(manifest, 'utf8')).version;
  if (installed !== pinned)
    fail(`${IMPORT_PACKAGE} ${installed} is installed, package.json pins ${pinned}: run \`npm install\``);
}

// solc calls this for every import it cannot find among the input sources, with the import's
// source unit name (relative imports inside the package arrive already joined to the importer's).
function importer(imported) {
  return (importPath) => {
    if (!importPath.startsWith(IMPORT_PACKAGE + '/') || importPath.split('/').includes('..'))
      return {error: `only ${IMPORT_PACKAGE}/... imports are resolved, not ${importPath}`};
    const file = path.join(ROOT, 'node_modules', importPath);
    if (!fs.existsSync(file))
      return {error: `${importPath} not found in node_modules`};
    const contents = fs.readFileSync(file, 'utf8');
    imported[importPath] = sha256(contents);
    return {contents};
  };
}

function compile(sourcePath, legacy) {
  const text = fs.readFileSync(path.join(ROOT, sourcePath), 'utf8');
  const settings = legacy ? SETTINGS_04 : SETTINGS;
  const input = {language: 'Solidity', sources: {[sourcePath]: {content: text}}, settings};
  const imported = {};
  // solc-js 0.4 takes standard JSON through compileStandardWrapper and resolves no imports
  // (TetherToken.sol has none).
  const output = JSON.parse(legacy
    ? solc04.compileStandardWrapper(JSON.stringify(input))
    : solc.compile(JSON.stringify(input), {import: importer(imported)}));
  const errors = (output.errors || []).filter((e) => e.severity === 'error');
  for (const e of output.errors || [])
    process.stderr.write(`${e.formattedMessage || e.message}\n`);
  if (errors.length > 0)
    fail(`${sourcePath} did not compile`);
  const contracts = {};
  for (const name of Object.keys(output.contracts[sourcePath]).sort()) {
    const c = output.contracts[sourcePath][name];
    if (!c.evm.bytecode.object)
      continue; // abstract contracts have no bytecode
    contracts[name] = {abi: c.abi, bytecode: '0x' + c.evm.bytecode.object};
  }
  const artifact = {
    compiler: legacy ? solc04.version() : solc.version(),
    settings: legacy ? {optimizer: SETTINGS_04.optimizer} : {evmVersion: SETTINGS.evmVersion, optimizer: SETTINGS.optimizer},
    source: sourcePath,
    source_sha256: sha256(text)
  };
  const importPaths = Object.keys(imported).sort();
  if (importPaths.length > 0)
    artifact.imports = Object.fromEntries(importPaths.map((p) => [p, imported[p]]));
  artifact.contracts = contracts;
  return artifact;
}

function main() {
  const args = process.argv.slice(2);
  let outDir = null;
  if (args.length === 2 && args[0] === '--out-dir')
    outDir = path.resolve(args[1]);
  else if (args.length !== 0)
    fail('usage: node contracts/compile.js [--out-dir DIR]');
  if (!solc.version().startsWith(EXPECTED_COMPILER + '+'))
    fail(`solc ${solc.version()} is installed, the artifacts are pinned to ${EXPECTED_COMPILER}`);
  if (!solc04.version().startsWith(EXPECTED_COMPILER_04 + '+'))
    fail(`solc-0.4 ${solc04.version()} is installed, TetherToken is pinned to ${EXPECTED_COMPILER_04}`);
  checkImportPackage();
  for (const build of BUILDS) {
    const artifact = compile(build.source, build.legacy === true);
    const target = outDir ? path.join(outDir, path.basename(build.out)) : path.join(ROOT, build.out);
    fs.mkdirSync(path.dirname(target), {recursive: true});
    fs.writeFileSync(target, JSON.stringify(artifact, null, 1) + '\n');
    process.stdout.write(`${build.source} -> ${path.relative(process.cwd(), target)}\n`);
  }
}

main();
