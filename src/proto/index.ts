// Wire messages generated from proto/*.proto by `npm run proto` (protobufjs static code).
import { skymesh } from './gen/skymesh.js'

export const pb = skymesh.v1
export type HelloMessage = skymesh.v1.Hello.$Properties
export type ResourcesMessage = skymesh.v1.Resources.$Properties
