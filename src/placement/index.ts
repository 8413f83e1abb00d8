// Placement: the pure planner core (cluster view in, plan out; no I/O, so the simulator runs the same
// code) and the cooperative DVMS-style protocol.
export * from './core/index.js'
export * from './protocol/index.js'
