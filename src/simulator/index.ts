// Simulator: a discrete-event simulator that runs the real placement core and protocol on 10,000+ hosts.
export { migrationCost } from './cost.js'
export { EventQueue } from './heap.js'
export { svg, table } from './report.js'
export { type Mode, type ModeResult, type Sample, type SimConfig, simulate } from './simulate.js'
export { quantile } from './stats.js'
export {
  hostId,
  type LoadBatch,
  parseCsvTrace,
  readCsvTrace,
  type SyntheticInit,
  syntheticTrace,
  type Trace,
  TraceError,
  type TraceVm,
} from './trace.js'
