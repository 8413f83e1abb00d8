// The status protocol (/skymesh/migrate/status/1.0.0): a source whose COMMIT got no RUNNING asks the
// destination whether that migration committed. The destination answers from what it remembers of
// recent migrations, then from the agent's journal (`lookupOutcome`); what neither knows did not commit
// here (a destination never resumes without COMMIT and refuses a COMMIT after its stream died).
import type { PeerId, Stream } from '@libp2p/interface'
import { pb } from '../proto/index.js'
import { MAX_ID_LENGTH, MAX_STATUS_BYTES, STATUS_PROTOCOL } from './constants.js'
import { LinkError, ProtocolError } from './errors.js'
import type { MigrationHost } from './types.js'
import { Framed } from './wire.js'

export type Outcome = 'unknown' | 'pending' | 'committed' | 'aborted'

const FROM_PB: Record<number, Outcome> = {
  [pb.MigrationOutcome.OUTCOME_UNKNOWN]: 'unknown',
  [pb.MigrationOutcome.OUTCOME_PENDING]: 'pending',
  [pb.MigrationOutcome.OUTCOME_COMMITTED]: 'committed',
  [pb.MigrationOutcome.OUTCOME_ABORTED]: 'aborted',
}
const TO_PB: Record<Outcome, number> = {
  unknown: pb.MigrationOutcome.OUTCOME_UNKNOWN,
  pending: pb.MigrationOutcome.OUTCOME_PENDING,
  committed: pb.MigrationOutcome.OUTCOME_COMMITTED,
  aborted: pb.MigrationOutcome.OUTCOME_ABORTED,
}

/** A reason in a reply is cut to this many characters (at most 4 bytes each: within MAX_STATUS_BYTES). */
export const MAX_REASON_CHARS = 200

function clip(s: string, n: number): string {
  return s.length <= n ? s : `${s.slice(0, n - 1)}…`
}

/** Asks `peer` about `migrationId` once (an aborted one may say why: `reason`). */
export async function queryStatus(
  host: Pick<MigrationHost, 'dialProtocol'>,
  peer: PeerId,
  migrationId: string,
  opts: { signal: AbortSignal },
): Promise<{ outcome: Outcome; epoch: number; reason?: string }> {
  const stream = await host.dialProtocol(peer, STATUS_PROTOCOL, { signal: opts.signal })
  const f = new Framed(stream, MAX_STATUS_BYTES)
  try {
    await f.write(pb.MigrationStatusQuery.encode({ migrationId }).finish(), opts.signal)
    const bytes = await f.read(opts.signal)
    if (bytes === null) throw new LinkError('the status stream ended')
    let m: InstanceType<typeof pb.MigrationStatusReply>
    try {
      m = pb.MigrationStatusReply.decode(bytes)
    } catch {
      throw new ProtocolError('undecodable status reply')
    }
    const outcome = FROM_PB[m.outcome]
    if (!outcome) throw new ProtocolError(`unknown outcome ${m.outcome}`)
    return { outcome, epoch: m.epoch, ...(m.reason ? { reason: m.reason } : {}) }
  } finally {
    await f.close()
  }
}

/** Answers one status query on `stream` with `lookup(id)`. */
export async function serveStatus(
  stream: Stream,
  lookup: (migrationId: string) => Promise<{ outcome: Outcome; epoch?: number; reason?: string }>,
  signal: AbortSignal,
): Promise<void> {
  const f = new Framed(stream, MAX_STATUS_BYTES)
  try {
    const bytes = await f.read(signal)
    if (bytes === null) return
    let id: string
    try {
      id = pb.MigrationStatusQuery.decode(bytes).migrationId
    } catch {
      throw new ProtocolError('undecodable status query')
    }
    if (id.length === 0 || id.length > MAX_ID_LENGTH) throw new ProtocolError('bad migration id')
    const r = await lookup(id)
    await f.write(
      pb.MigrationStatusReply.encode({
        outcome: TO_PB[r.outcome],
        epoch: r.epoch ?? 0,
        reason: r.reason ? clip(r.reason, MAX_REASON_CHARS) : '',
      }).finish(),
      signal,
    )
  } catch (err) {
    f.abort(err instanceof Error ? err : new Error(String(err)))
    return
  }
  await f.close()
}
