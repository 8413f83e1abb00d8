// Property types of the generated transfer messages (src/proto exports `pb` as a value only).
import type { skymesh } from '../proto/gen/skymesh.js'

export type MigrationOfferMsg = skymesh.v1.MigrationOffer.$Properties
export type MigrationVmSpecMsg = skymesh.v1.MigrationVmSpec.$Properties
export type MigrationControlMsg = skymesh.v1.MigrationControl.$Properties
export type MigrationSwitchoverMsg = skymesh.v1.MigrationSwitchover.$Properties
export type DataFrameMsg = skymesh.v1.DataFrame.$Properties
export type DataRunMsg = skymesh.v1.DataRun.$Properties
export type DataHelloMsg = skymesh.v1.DataHello.$Properties
export type DataAckMsg = skymesh.v1.DataAck.$Properties
export type MigrationStatusReplyMsg = skymesh.v1.MigrationStatusReply.$Properties
