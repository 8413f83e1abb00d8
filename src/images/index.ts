// Images: content-addressed image store, chunk transfer between hosts (/skymesh/images/1), pipelined
// pushes to many hosts, copy-on-write bases for synthetic VMs and virtual clusters. See README.md.
//
// For drivers and other modules, the entry points are on ImageService (the agent holds one, see
// src/node/images.ts AgentImages):
//   service.ensure(id, signal)      make image `id` complete here, fetching it from any holder by its id
//   service.localFile(id, signal)   the same, then the path of the image as one read-only local file
//   service.store.resolve(ref)      id from an id, a unique prefix or a name
//   service.store.isComplete(id)    whether the whole image is here
//   imageBase(store, id)            the image read as a disk base in 64 KiB blocks (copy-on-write)

export { type ImageBase, imageBase } from './base.js'
export { DEFAULT_CHUNK_SIZE, IMAGES_PROTOCOL, MAX_MESSAGE_BYTES, VCLUSTER_PROTOCOL } from './constants.js'
export type { PushHostView, PushView } from './distribute.js'
export { BadChunkError, ImagesError, type ImagesErrorCode } from './errors.js'
export { LinkClock } from './link.js'
export { chunkLength, decodeManifest, encodeManifest, imageIdOf, type Manifest, sha256 } from './manifest.js'
export type { PullProgress } from './pull.js'
export {
  ImageService,
  type ImageServiceInit,
  type ImagesHost,
  type ImageView,
  type MeshView,
} from './service.js'
export { ImageStore, type ImageSummary } from './store.js'
export { ancestors, buildTree, reparent, type Tree, type TreeHost } from './tree.js'
export {
  type ClusterVmEntry,
  contexts,
  demandOf,
  type PlacementHost,
  type PlacementMode,
  type PlaceOptions,
  placeVms,
  type VmContext,
  type VmShape,
} from './vcluster.js'
