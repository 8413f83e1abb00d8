// Keeps the cipher's output buffers in malloc's heap instead of fresh mappings (glibc).
//
// Node's `cipher.update` allocates every output with malloc (twice: a first buffer one byte too long,
// then a zero-filled copy of the right size). glibc maps every allocation above its mmap threshold
// (128 KiB at start) afresh and returns it to the kernel on free, and it trims the heap's top above
// twice that: so 1 MiB outputs, freed by V8's GC in batches of tens of MiB, are page-faulted in again
// and again (page faults are dear on this VM: ~11 µs each). Measured: `update` of 1 MiB costs 2.1
// ms/MiB by default and 0.33 ms/MiB (OpenSSL's own AES-GCM speed) once the thresholds are up.
//
// glibc raises the thresholds by itself (mallopt(3), "dynamic mmap threshold") when a mapped chunk is
// freed: the mmap threshold to that chunk's size (at most 32 MiB), the trim threshold to twice that.
// Node has no mallopt, so this allocates one such chunk and drops it: a buffer of 31 MiB that is
// never written (so it costs no page faults), which V8 frees at its next collection. Elsewhere than
// glibc it is a short-lived allocation and nothing more. It leaves up to 62 MiB of freed memory in
// the heap for reuse.
const CHUNK = 31 * 1024 * 1024
let raised = false

/** Raises glibc's mmap and trim thresholds for this process soon (once; later calls do nothing). */
export function raiseMallocMmapThreshold(): void {
  if (raised) return
  raised = true
  // Opt out (to measure the difference): SKYMESH_MALLOC_THRESHOLD=off
  if (process.env.SKYMESH_MALLOC_THRESHOLD === 'off') return
  Buffer.allocUnsafeSlow(CHUNK)
}
