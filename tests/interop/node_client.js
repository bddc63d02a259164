'use strict'
// A grenache-nodejs-http PeerRPCClient (0.7.13) calling a service found through a grape.
// stdin: {"grape": url, "service": key, "calls": [{"payload": any, "compress": bool}], "repeat": n}
// stdout: one JSON line {"results": [{"data": any} | {"error": message}], "latencies_ms": [...]}
// (results of the first round; latencies of every call of every round, in ms).
// Node's Link caches every lookup for 10 s, an empty one too: start this only once the
// service is visible on the grape.

const { PeerRPCClient } = require('grenache-nodejs-http')
const Link = require('grenache-nodejs-link')

function readStdin () {
  return new Promise((resolve, reject) => {
    const chunks = []
    process.stdin.on('data', (c) => chunks.push(c))
    process.stdin.on('end', () => resolve(JSON.parse(Buffer.concat(chunks).toString())))
    process.stdin.on('error', reject)
  })
}

function call (peer, service, c) {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint()
    peer.request(service, c.payload, { timeout: c.timeout || 10000, compress: !!c.compress }, (err, data) => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6
      resolve({ ms, result: err ? { error: err.message } : { data: data === undefined ? null : data } })
    })
  })
}

async function main () {
  const conf = await readStdin()
  const link = new Link({ grape: conf.grape })
  link.start()
  const peer = new PeerRPCClient(link, {})
  peer.init()
  const results = []
  const latencies = []
  for (let round = 0; round < (conf.repeat || 1); round++) {
    for (const c of conf.calls) {
      const { ms, result } = await call(peer, conf.service, c)
      if (round === 0) results.push(result)
      latencies.push(ms)
    }
  }
  process.stdout.write(JSON.stringify({ results, latencies_ms: latencies }) + '\n', () => {
    peer.stop()
    link.stop()
    process.exit(0)
  })
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
