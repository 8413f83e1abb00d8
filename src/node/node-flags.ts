// How every agent process runs: V8 flags and glibc tunables. bin/skymesh.js's shebang carries both, and
// every place that starts an agent as `process.execPath ... bin/skymesh.js` (the demo, the test harness,
// the benches) passes them too (AGENT_NODE_FLAGS, agentEnv), since a script run by an explicit `node`
// ignores its shebang.
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

// GLIBC_TUNABLES glibc.malloc.hugetlb=1 (glibc >= 2.35; others ignore it): malloc asks for transparent
// huge pages (madvise MADV_HUGEPAGE) on the memory it maps, so a guest's memory (one large Buffer per
// synthetic VM) is faulted in 2 MiB at a time instead of 4 KiB. Hypervisors back guest memory with huge
// pages for the same reason. On this VM a 4 KiB page fault costs ~11 µs: a destination receiving a
// 1 GiB VM whose every page is in use took ~300k faults, 4.7 s of system time, most of the migration;
// with huge pages ~12k (bench:migrate-one, 1 GiB hot100: 10.8-12.6 s -> 3.3-5.5 s; idle 1 GiB, a fresh
// process's first migration: 0.97 -> 0.51 s). Where the kernel's THP mode is `madvise` (Debian's
// default) nothing else asks for them; with `never` this does nothing. The cost: memory is taken in
// 2 MiB pieces, so a guest that writes one page in each 2 MiB holds more resident memory; an idle agent
// holds ~4 MB more (144 against 140 MB resident, measured). glibc reads tunables only at start, hence
// the environment.
export const AGENT_GLIBC_TUNABLES = 'glibc.malloc.hugetlb=1'

/** `env` with AGENT_GLIBC_TUNABLES added to GLIBC_TUNABLES (unless that already sets the same tunable). */
export function agentEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const tunables = env.GLIBC_TUNABLES ?? ''
  const name = AGENT_GLIBC_TUNABLES.slice(0, AGENT_GLIBC_TUNABLES.indexOf('=') + 1)
  if (tunables.split(':').some((t) => t.startsWith(name))) return { ...env }
  return { ...env, GLIBC_TUNABLES: tunables ? `${tunables}:${AGENT_GLIBC_TUNABLES}` : AGENT_GLIBC_TUNABLES }
}

/** The shebang line of bin/skymesh.js: `env -S` sets the tunable (keeping the caller's) and the flags. */
export const AGENT_SHEBANG = `#!/usr/bin/env -S GLIBC_TUNABLES=\${GLIBC_TUNABLES}:${AGENT_GLIBC_TUNABLES} node ${AGENT_NODE_FLAGS.join(' ')}`
