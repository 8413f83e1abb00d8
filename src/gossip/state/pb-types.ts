// Instance types of the generated messages (src/proto exports `pb` as a value only).
import type { pb } from '../../proto/index.js'

export type HostState = InstanceType<typeof pb.HostState>
export type SignedHostState = InstanceType<typeof pb.SignedHostState>
export type Member = InstanceType<typeof pb.Member>
