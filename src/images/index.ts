// Images: content-addressed image store, chunk transfer between hosts (/skymesh/images/1), pipelined
// pushes to many hosts, copy-on-write bases for synthetic VMs and virtual clusters. See README.md.

export { type ImageBase, imageBase } from './base.js'
export { DEFAULT_CHUNK_SIZE, IMAGES_PROTOCOL, MAX_MESSAGE_BYTES, VCLUSTER_PROTOCOL } from './constants.js'
export type { PushHostView, PushView } from './distribute.js'
export { BadChunkError, ImagesError, type ImagesErrorCode } from './errors.js'
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
  type PlacementHost,
  spread,
  type VmContext,
  type VmShape,
} from './vcluster.js'
