// Process entry (bin/skymesh.js imports the compiled file). The polyfill must load before libp2p.
import '../node/polyfill.js'
import { processIo } from './io.js'
import { runCli } from './program.js'

const code = await runCli(process.argv.slice(2), processIo())
process.exitCode = code
// safety net: a handle left open (a socket, a timer) must not keep a finished command alive
setTimeout(() => process.exit(code), 2000).unref()
