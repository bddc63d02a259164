'use strict'
// A grenache-nodejs-http PeerRPCServer (0.7.13) announced on a grape through Node's Link.
// argv: grape_url service_key. Prints "ready <port>" once listening and announced once, then
// serves until stdin closes (the test process went away) or SIGTERM.
// Replies: payload {"action": "fail"} -> error "ERR_TEST_REFUSED"; anything else ->
// {"key": key, "echo": payload, "server": "node"}.

const { PeerRPCServer } = require('grenache-nodejs-http')
const Link = require('grenache-nodejs-link')

const [grape, service] = process.argv.slice(2)
const link = new Link({ grape })
link.start()

const peer = new PeerRPCServer(link, { timeout: 300000 })
peer.init()
const transport = peer.transport('server')
transport.listen(0)

transport.on('request', (rid, key, payload, handler) => {
  if (payload && payload.action === 'fail') {
    handler.reply(new Error('ERR_TEST_REFUSED'))
    return
  }
  handler.reply(null, { key, echo: payload, server: 'node' })
})

let stopping = false
function stop () {
  if (stopping) return
  stopping = true
  peer.stop()
  link.stop()
  process.exit(0)
}

transport.socket.on('listening', () => {
  const port = transport.socket.address().port
  link.startAnnouncing(service, port, { interval: 1000 }, (err) => {
    if (err) {
      console.error('announce failed', err)
      process.exit(1)
    }
    process.stdout.write(`ready ${port}\n`)
  })
})

process.stdin.resume()
process.stdin.on('end', stop)
process.on('SIGTERM', stop)
