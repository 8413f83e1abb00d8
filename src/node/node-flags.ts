// V8 flags every agent process runs with: bin/skymesh.js's shebang carries them, and every place that
// starts an agent as `process.execPath ... bin/skymesh.js` (the demo, the test harness, the benches)
// passes them too, since a script run by an explicit `node` ignores its shebang.
//
// --initial-heap-size=128 (MB): V8 counts external memory allocated since the last full collection
// against the old generation's free room, which on a small heap (an agent's is ~20 MB) is ~24 MB. A
// destination receives a migration as ~16 KiB TLS chunks (a Buffer each) and allocates the guest's
// memory (a 1 GiB Buffer for a 1 GiB VM): 4-7 full mark-compacts per idle 1 GiB migration, 30-45 % of
// the destination's CPU. With the larger initial heap: one (docs/perf/migration-history.md, session 8;
// `--trace-gc`: 9 -> 2 over two migrations). V8 reads it only at start: `v8.setFlagsFromString` later
// changes nothing and node refuses it in NODE_OPTIONS. The cost: up to 128 MB of JS heap before the
// first full collection (heap pages are committed as they are used, not up front).
export const AGENT_NODE_FLAGS: readonly string[] = ['--initial-heap-size=128']
