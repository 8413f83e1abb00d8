// Entry point of `npm run test:faults`; everything else is in run.ts.
import '../../src/node/polyfill.js'
import { main } from './run.js'

await main()
