// The propagation tree of a push (pure): the holder at the root, then per site one gateway fed by the
// root (a chunk crosses each slow inter-site link once) and the other hosts of that site in a k-ary
// tree below it (fanout 1 = a chain, as Kastafior/TakTuk). Every host pulls from its parent while the
// parent still receives, so the whole tree fills in about the time of one copy.

export interface TreeHost {
  id: string
  site: string
}

export interface Tree {
  root: string
  /** host -> the host it pulls from. */
  parent: Map<string, string>
  /** host -> hosts that pull from it. */
  children: Map<string, string[]>
  /** Every host but the root, parents before children. */
  order: string[]
}

export function buildTree(root: TreeHost, targets: readonly TreeHost[], fanout = 2): Tree {
  if (!Number.isInteger(fanout) || fanout < 1)
    throw new RangeError(`fanout ${fanout} must be an integer >= 1`)
  const bySite = new Map<string, string[]>()
  const seen = new Set<string>([root.id])
  for (const t of targets) {
    if (seen.has(t.id)) continue
    seen.add(t.id)
    const list = bySite.get(t.site) ?? []
    list.push(t.id)
    bySite.set(t.site, list)
  }
  const tree: Tree = { root: root.id, parent: new Map(), children: new Map(), order: [] }
  const attach = (child: string, parent: string) => {
    tree.parent.set(child, parent)
    const c = tree.children.get(parent) ?? []
    c.push(child)
    tree.children.set(parent, c)
  }
  // The root's own site first, then the others by name: a stable shape for the same input.
  const sites = [...bySite.keys()].sort((a, b) =>
    a === root.site ? -1 : b === root.site ? 1 : a.localeCompare(b),
  )
  for (const site of sites) {
    const hosts = bySite.get(site)!.sort()
    let top: string
    let rest: string[]
    if (site === root.site) {
      top = root.id
      rest = hosts
    } else {
      top = hosts[0]!
      rest = hosts.slice(1)
      attach(top, root.id)
    }
    // k-ary tree in breadth-first order under `top`: node j's parent is node floor((j-1)/k).
    const level = [top, ...rest]
    for (let j = 1; j < level.length; j++) attach(level[j]!, level[Math.floor((j - 1) / fanout)]!)
  }
  tree.order = bfs(tree)
  return tree
}

function bfs(tree: Tree): string[] {
  const out: string[] = []
  const queue = [tree.root]
  while (queue.length) {
    const n = queue.shift()!
    for (const c of tree.children.get(n) ?? []) {
      out.push(c)
      queue.push(c)
    }
  }
  return out
}

/** Where `host` falls back to, nearest first: its parent, grandparent, ... up to the root. */
export function ancestors(tree: Tree, host: string): string[] {
  const out: string[] = []
  for (let p = tree.parent.get(host); p !== undefined; p = tree.parent.get(p)) out.push(p)
  return out
}

/** The tree without `failed`: its children pull from its parent instead (routed around). */
export function reparent(tree: Tree, failed: string): Tree {
  if (failed === tree.root) throw new RangeError('the root cannot be routed around')
  const up = tree.parent.get(failed)
  if (up === undefined) return tree
  const parent = new Map(tree.parent)
  const children = new Map([...tree.children].map(([k, v]) => [k, [...v]]))
  parent.delete(failed)
  const orphans = children.get(failed) ?? []
  children.delete(failed)
  const siblings = (children.get(up) ?? []).filter((c) => c !== failed)
  for (const o of orphans) {
    parent.set(o, up)
    siblings.push(o)
  }
  children.set(up, siblings)
  const next: Tree = { root: tree.root, parent, children, order: [] }
  next.order = bfs(next)
  return next
}

/** Depth of each host (root 0). */
export function depth(tree: Tree, host: string): number {
  return ancestors(tree, host).length
}
