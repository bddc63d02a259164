#!/usr/bin/env node
/*
 * A Bitcoin regtest node for development and tests: bcoin 1.0.2 (a full node in JavaScript)
 * made to look like Bitcoin Core's regtest to a JSON-RPC client.
 *
 * Usage:
 *   node regtest_node.js --port PORT [--api-key KEY] [--data-dir DIR] [--log-level LEVEL]
 *
 *   --port       HTTP/JSON-RPC port on 127.0.0.1 (required; 0 is refused: the caller picks it).
 *   --api-key    password for HTTP Basic auth (any user name). Without it there is NO auth:
 *                the node listens on 127.0.0.1 only and holds regtest coins only, so anyone on
 *                this machine may use it. Pass a key on shared machines.
 *   --data-dir   keep the chain in this directory (LevelDB); without it everything is in memory.
 *   --log-level  bcoin log level on stderr (default "error").
 *
 * When the RPC server listens it prints exactly one line to stdout:
 *   mixhouse-regtest ready rpc=http://127.0.0.1:PORT height=H
 * Errors before that print "mixhouse-regtest failed: ..." to stderr and exit with status 1.
 * SIGTERM / SIGINT close the node cleanly.
 *
 * What differs from stock bcoin regtest, and why (reference: Bitcoin Core chainparams.cpp,
 * CRegTestParams, and the Bitcoin Core RPC documentation, https://developer.bitcoin.org/reference/rpc/):
 *
 * Network parameters (the regtest Network object's sub-objects are edited in place, before
 * anything reads them):
 *   - address prefixes as Core: bech32 hrp "bcrt" (BIP-173), P2PKH version 0x6f, P2SH 0xc4,
 *     WIF 0xef, BIP-32 tpub/tprv (0x043587cf / 0x04358394); bcoin uses "rb", 0x3c, 0x26, 0x5a.
 *   - segwit (BIP-141/143/147) and CSV (BIP-68/112/113) active from height 0: bcoin only knows
 *     BIP-9 activation (about height 432 on regtest); Core regtest has them buried at 0
 *     (since Core 0.19 / 0.21). Done by wrapping Chain#getState for those two deployments.
 *   - no peers: listen false, no seeds, no outbound connections; workers off.
 *
 * RPC methods replaced (registered over bcoin's handlers, same names):
 *   - getblock "hash" ( verbosity ): Core's integer verbosity 0/1/2/3 (bcoin rejects 2 and
 *     wants (hash, true, true)). 2 adds each transaction as an object with "hex" and "fee";
 *     3 also adds "prevout" ({generated, height, value, scriptPubKey}) to every input, from
 *     the block's undo data (Core >= 23). bcoin's (hash, true, true) still works (= 2). A
 *     block off the main chain has confirmations -1, as in Core.
 *   - sendrawtransaction "hex": waits for mempool acceptance and answers with Core's errors
 *     (bcoin returned the txid at once, even for an invalid transaction): -22 undecodable,
 *     -26 policy/consensus rejection with the reason ("min relay fee not met",
 *     "mandatory-script-verify-flag-failed", ...), -25 "bad-txns-inputs-missingorspent",
 *     -27 "Transaction already in block chain". Already in the mempool: returns the txid.
 *     The min relay fee (1 sat/vB on regtest) is enforced for every transaction, as in Core;
 *     bcoin let high-priority (old-coin) transactions through for free.
 *   - estimatesmartfee conf_target ( "estimate_mode" ): Core's answer shape
 *     {"feerate": BTC/kvB, "blocks": n} or {"errors": [...], "blocks": n}; bcoin answered
 *     {"fee": -1} and refused a second argument.
 *   - scantxoutset "start" [ "addr(ADDRESS)", ... ]: missing in bcoin; served from bcoin's
 *     address index over confirmed UTXOs only (like Core, which reads the UTXO set). Only
 *     addr() descriptors; "abort" and "status" answer false / null.
 *   - getrawtransaction, getmempoolentry: "not found" is error -5 (RPC_INVALID_ADDRESS_OR_KEY)
 *     as in Core, not -1. Every scriptPubKey object also has Core >= 22's single "address".
 *
 *   - invalidateblock "hash": as in Core, the disconnected blocks' transactions go back to the
 *     mempool (with what was there before). Stock bcoin left the mempool on the old tip,
 *     after which every generatetoaddress failed with "Mempool/chain tip mismatch".
 *
 * Not fixed: no testmempoolaccept; no taproot (bcoin 1.0.2 predates it).
 */

'use strict';

const bcoin = require('bcoin');
const bweb = require('bweb');
const Validator = require('bval');
const common = require('bcoin/lib/blockchain/common');
const policy = require('bcoin/lib/protocol/policy');

const {FullNode, Network, TX, Address, Amount} = bcoin;
const {RPCError} = bweb;

// Bitcoin Core RPC error codes (src/rpc/protocol.h).
const RPC_MISC_ERROR = -1;
const RPC_TYPE_ERROR = -3;
const RPC_INVALID_ADDRESS_OR_KEY = -5;
const RPC_INVALID_PARAMETER = -8;
const RPC_DESERIALIZATION_ERROR = -22;
const RPC_VERIFY_ERROR = -25;
const RPC_VERIFY_REJECTED = -26;
const RPC_VERIFY_ALREADY_IN_CHAIN = -27;

function fail(message) {
  process.stderr.write(`mixhouse-regtest failed: ${message}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const out = {port: null, apiKey: null, dataDir: null, logLevel: 'error'};
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined)
      fail(`${flag} needs a value`);
    i++;
    switch (flag) {
      case '--port':
        out.port = Number(value);
        break;
      case '--api-key':
        out.apiKey = value;
        break;
      case '--data-dir':
        out.dataDir = value;
        break;
      case '--log-level':
        out.logLevel = value;
        break;
      default:
        fail(`unknown option ${flag}`);
    }
  }
  if (!Number.isInteger(out.port) || out.port < 1 || out.port > 65535)
    fail('--port must be an integer in 1..65535');
  return out;
}

/** Edit bcoin's regtest parameters in place so they match Bitcoin Core's regtest. */
function patchNetwork() {
  const regtest = Network.get('regtest');
  Object.assign(regtest.keyPrefix, {
    privkey: 0xef,
    xpubkey: 0x043587cf,
    xprivkey: 0x04358394,
    xpubkey58: 'tpub',
    xprivkey58: 'tprv',
    coinType: 1
  });
  Object.assign(regtest.addressPrefix, {
    pubkeyhash: 0x6f,
    scripthash: 0xc4,
    bech32: 'bcrt'
  });
  regtest.seeds.length = 0;
  return regtest;
}

/** Segwit and CSV are ACTIVE at every height (Core regtest buries them at 0). */
function patchDeployments(chain) {
  const original = chain.getState;
  const active = new Set(['segwit', 'csv']);
  chain.getState = async function getState(prev, deployment) {
    if (active.has(deployment.name))
      return common.thresholdStates.ACTIVE;
    return original.call(this, prev, deployment);
  };
}

function btc(value) {
  return Amount.btc(value, true);
}

/** Replace bcoin RPC handlers with Core-compatible ones (see the header comment). */
function patchRpc(rpc, node) {
  const {chain, mempool, network} = node;

  const originalScriptToJSON = rpc.scriptToJSON;
  rpc.scriptToJSON = function scriptToJSON(script, hex) {
    const json = originalScriptToJSON.call(this, script, hex);
    if (json.addresses && json.addresses.length === 1)
      json.address = json.addresses[0];
    return json;
  };

  const replace = (name, handler) => {
    rpc.calls[name] = handler.bind(rpc);
  };

  replace('getblock', async function getblock(args, help) {
    if (help || args.length < 1 || args.length > 3)
      throw new RPCError(RPC_MISC_ERROR, 'getblock "blockhash" ( verbosity )');
    const valid = new Validator(args);
    const hash = valid.rhash(0);
    if (!hash)
      throw new RPCError(RPC_TYPE_ERROR, 'Invalid block hash.');
    let verbosity = 1;
    if (args.length >= 2) {
      const raw = args[1];
      if (typeof raw === 'boolean')
        verbosity = raw ? 1 : 0;
      else if (Number.isInteger(raw) && raw >= 0 && raw <= 3)
        verbosity = raw;
      else
        throw new RPCError(RPC_TYPE_ERROR, 'verbosity must be 0, 1, 2 or 3');
    }
    if (args.length === 3 && args[2] === true && verbosity === 1)
      verbosity = 2; // bcoin's (hash, true, true)

    const entry = await chain.getEntry(hash);
    if (!entry)
      throw new RPCError(RPC_INVALID_ADDRESS_OR_KEY, 'Block not found');
    const block = await chain.getBlock(entry.hash);
    if (!block)
      throw new RPCError(RPC_MISC_ERROR, 'Block not available');
    if (verbosity === 0)
      return block.toRaw().toString('hex');

    const main = await chain.isMainChain(entry);
    const json = await this.blockToJSON(entry, block, verbosity >= 2);
    if (!main)
      json.confirmations = -1;
    if (verbosity === 1)
      return json;

    // Undo data exists only for blocks connected to the main chain.
    const view = main ? await chain.getBlockView(block) : null;
    block.txs.forEach((tx, i) => {
      const txJson = json.tx[i];
      txJson.hex = tx.toRaw().toString('hex');
      delete txJson.blockhash;
      delete txJson.confirmations;
      delete txJson.time;
      delete txJson.blocktime;
      if (!view || tx.isCoinbase())
        return;
      let inValue = 0;
      let complete = true;
      tx.inputs.forEach((input, j) => {
        const coin = view.getCoinFor(input);
        if (!coin) {
          complete = false;
          return;
        }
        inValue += coin.value;
        if (verbosity === 3) {
          txJson.vin[j].prevout = {
            generated: coin.coinbase,
            height: coin.height,
            value: btc(coin.value),
            scriptPubKey: this.scriptToJSON(coin.script, true)
          };
        }
      });
      if (complete)
        txJson.fee = btc(inValue - tx.getOutputValue());
    });
    return json;
  });

  const originalGetRawTransaction = rpc.calls.getrawtransaction;
  replace('getrawtransaction', async function getrawtransaction(args, help) {
    try {
      return await originalGetRawTransaction.call(this, args, help);
    } catch (err) {
      if (err.message === 'Transaction not found.') {
        throw new RPCError(RPC_INVALID_ADDRESS_OR_KEY,
          'No such mempool or blockchain transaction.');
      }
      throw err;
    }
  });

  const originalGetMempoolEntry = rpc.calls.getmempoolentry;
  replace('getmempoolentry', async function getmempoolentry(args, help) {
    try {
      return await originalGetMempoolEntry.call(this, args, help);
    } catch (err) {
      if (err.message === 'Transaction not in mempool.')
        throw new RPCError(RPC_INVALID_ADDRESS_OR_KEY, 'Transaction not in mempool');
      throw err;
    }
  });

  replace('sendrawtransaction', async function sendrawtransaction(args, help) {
    if (help || args.length < 1 || args.length > 2)
      throw new RPCError(RPC_MISC_ERROR, 'sendrawtransaction "hexstring" ( maxfeerate )');
    const valid = new Validator(args);
    const data = valid.buf(0);
    if (!data)
      throw new RPCError(RPC_DESERIALIZATION_ERROR, 'TX decode failed');
    let tx;
    try {
      tx = TX.fromRaw(data);
    } catch (err) {
      throw new RPCError(RPC_DESERIALIZATION_ERROR, `TX decode failed: ${err.message}`);
    }
    const txid = tx.txid();
    if (mempool.hasEntry(tx.hash()))
      return txid;

    // Core's min relay fee, for every transaction (bcoin waives it for old coins).
    const view = await mempool.getCoinView(tx);
    if (tx.hasCoins(view)) {
      const fee = tx.getFee(view);
      const minFee = policy.getMinFee(tx.getVirtualSize(), network.minRelay);
      if (fee < minFee)
        throw new RPCError(RPC_VERIFY_REJECTED, `min relay fee not met, ${fee} < ${minFee}`);
    }

    let missing;
    try {
      missing = await mempool.addTX(tx);
    } catch (err) {
      if (err.type !== 'VerifyError')
        throw err;
      if (err.reason === 'txn-already-in-mempool')
        return txid;
      if (err.reason === 'txn-already-known')
        throw new RPCError(RPC_VERIFY_ALREADY_IN_CHAIN, 'Transaction already in block chain');
      if (err.reason === 'bad-txns-inputs-spent')
        throw new RPCError(RPC_VERIFY_REJECTED, 'txn-mempool-conflict');
      throw new RPCError(RPC_VERIFY_REJECTED, err.reason);
    }
    if (missing) {
      // Core keeps no orphans from RPC: inputs unknown or already spent in the chain.
      if (mempool.hasOrphan(tx.hash()))
        mempool.removeOrphan(tx.hash());
      throw new RPCError(RPC_VERIFY_ERROR, 'bad-txns-inputs-missingorspent');
    }
    node.broadcast(tx).catch(() => {});
    return txid;
  });

  replace('invalidateblock', async function invalidateblock(args, help) {
    if (help || args.length !== 1)
      throw new RPCError(RPC_MISC_ERROR, 'invalidateblock "blockhash"');
    const valid = new Validator(args);
    const hash = valid.rhash(0);
    if (!hash)
      throw new RPCError(RPC_TYPE_ERROR, 'Invalid block hash.');
    const target = await chain.getEntry(hash);
    if (!target)
      throw new RPCError(RPC_INVALID_ADDRESS_OR_KEY, 'Block not found');

    // Transactions to resubmit: those of the blocks being disconnected (oldest first),
    // then those already in the mempool.
    const resubmit = [];
    if (await chain.isMainChain(target)) {
      const perBlock = [];
      for (let entry = chain.tip; entry && entry.height >= target.height;
        entry = await chain.getEntry(entry.prevBlock)) {
        const block = await chain.getBlock(entry.hash);
        perBlock.push(block ? block.txs.slice(1) : []);
      }
      for (const txs of perBlock.reverse())
        resubmit.push(...txs);
    }
    for (const entry of mempool.map.values())
      resubmit.push(entry.tx);

    await chain.invalidate(hash);
    await mempool.reset();
    for (const tx of resubmit) {
      try {
        await mempool.addTX(tx);
      } catch (err) {
        // Conflicts or now-invalid transactions are dropped, as in Core.
      }
    }
    return null;
  });

  replace('estimatesmartfee', async function estimatesmartfee(args, help) {
    if (help || args.length < 1 || args.length > 2)
      throw new RPCError(RPC_MISC_ERROR, 'estimatesmartfee conf_target ( "estimate_mode" )');
    const valid = new Validator(args);
    const blocks = valid.u32(0, 1);
    if (blocks < 1 || blocks > 1008)
      throw new RPCError(RPC_INVALID_PARAMETER, 'Invalid conf_target, must be between 1 and 1008');
    const rate = node.fees ? node.fees.estimateFee(blocks, true) : 0; // satoshi per kvB
    if (!rate)
      return {errors: ['Insufficient data or no feerate found'], blocks: blocks};
    return {feerate: btc(Math.max(rate, network.minRelay)), blocks: blocks};
  });

  replace('scantxoutset', async function scantxoutset(args, help) {
    if (help || args.length < 1 || args.length > 2)
      throw new RPCError(RPC_MISC_ERROR, 'scantxoutset "action" ( [scanobjects,...] )');
    const action = args[0];
    if (action === 'abort')
      return false;
    if (action === 'status')
      return null;
    if (action !== 'start')
      throw new RPCError(RPC_INVALID_PARAMETER, 'Invalid action');
    if (!Array.isArray(args[1]))
      throw new RPCError(RPC_MISC_ERROR, 'scanobjects argument is required for the start action');
    const addrs = [];
    for (const item of args[1]) {
      const text = typeof item === 'string' ? item : item && item.desc;
      const match = typeof text === 'string' && /^addr\(([^)]+)\)(#[a-z0-9]+)?$/.exec(text);
      if (!match)
        throw new RPCError(RPC_INVALID_PARAMETER, 'only addr(ADDRESS) descriptors are supported');
      try {
        addrs.push(Address.fromString(match[1], network));
      } catch (err) {
        throw new RPCError(RPC_INVALID_ADDRESS_OR_KEY, `Invalid address: ${match[1]}`);
      }
    }
    const coins = await chain.getCoinsByAddress(addrs);
    let total = 0;
    const unspents = coins.map((coin) => {
      total += coin.value;
      const addr = coin.script.getAddress();
      return {
        txid: coin.txid(),
        vout: coin.index,
        scriptPubKey: coin.script.toJSON(),
        desc: addr ? `addr(${addr.toString(network)})` : `raw(${coin.script.toJSON()})`,
        amount: btc(coin.value),
        coinbase: coin.coinbase,
        height: coin.height
      };
    });
    return {
      success: true,
      txouts: unspents.length,
      height: chain.height,
      bestblock: chain.tip.rhash(),
      unspents: unspents,
      total_amount: btc(total)
    };
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  patchNetwork();

  const options = {
    network: 'regtest',
    memory: args.dataDir === null,
    workers: false,
    listen: false,
    seeds: [],
    indexTX: true,
    indexAddress: true,
    httpHost: '127.0.0.1',
    httpPort: args.port,
    logLevel: args.logLevel,
    logConsole: true,
    logFile: false
  };
  if (args.dataDir !== null)
    options.prefix = args.dataDir;
  if (args.apiKey !== null)
    options.apiKey = args.apiKey;
  else
    options.noAuth = true;

  const node = new FullNode(options);
  // The peer pool is never connected; its chain-reset hook (forceSync) would throw "Pool is
  // not connected!" and stop the other reset listeners (the mempool's) from running.
  node.pool.forceSync = () => {};
  patchDeployments(node.chain);
  patchRpc(node.rpc, node);

  if (args.dataDir !== null)
    await node.ensure();
  // No node.connect(): the peer pool never starts, so no connection is ever attempted.
  await node.open();

  let closing = false;
  const shutdown = async () => {
    if (closing)
      return;
    closing = true;
    try {
      await node.close();
    } finally {
      process.exit(0);
    }
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);

  process.stdout.write(
    `mixhouse-regtest ready rpc=http://127.0.0.1:${args.port} height=${node.chain.height}\n`);
}

main().catch((err) => fail(err && err.stack ? err.stack : String(err)));
