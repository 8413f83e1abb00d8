// Wire messages generated from proto/*.proto by `npm run proto` (protobufjs static code).
import protobuf from 'protobufjs/minimal.js'
import { skymesh } from './gen/skymesh.js'

// 64-bit fields (versions, epochs, incarnations, ms timestamps) are read as plain numbers, not Long
// objects: our values stay below 2^53. Without this protobufjs picks up the `long` package.
protobuf.util.Long = undefined as unknown as typeof protobuf.util.Long
protobuf.configure()

export const pb = skymesh.v1
export type HelloMessage = skymesh.v1.Hello.$Properties
export type ResourcesMessage = skymesh.v1.Resources.$Properties
export type MemberMessage = skymesh.v1.Member.$Properties
export type SwimMessageProps = skymesh.v1.SwimMessage.$Properties
export type HostStateMessage = skymesh.v1.HostState.$Properties
export type VmSummaryMessage = skymesh.v1.VmSummary.$Properties
export type SignedHostStateMessage = skymesh.v1.SignedHostState.$Properties
