// Site-aware choice of SWIM probe and push targets: members of our own site are `preference` times
// likelier to be picked than members of other sites, so most probes and gossip stay inside a site
// and a few cross the slow links between sites (enough to detect failures and spread updates there).
// With preference 1, or when every member is in our site, this is plain SWIM. A member whose site
// is not known yet counts as remote.
import { shuffle } from './util.js'

type Group = 'local' | 'remote'

/** Chance of picking from the local group, given the sizes of both groups. */
export function localChance(local: number, remote: number, preference: number): number {
  if (local === 0) return 0
  if (remote === 0) return 1
  return (preference * local) / (preference * local + remote)
}

/**
 * Probe targets: a shuffled round-robin per group (each member of a group is probed once per pass
 * of that group, memberlist-style), the group chosen per probe by `localChance`.
 */
export class SiteProbeOrder {
  private readonly orders: Record<Group, { ids: string[]; index: number }> = {
    local: { ids: [], index: 0 },
    remote: { ids: [], index: 0 },
  }

  constructor(
    private readonly opts: {
      random: () => number
      preference: number
      /** Members that may be probed now (alive or suspect), with their sites. */
      candidates: () => { peerId: string; site: string }[]
      selfSite: string
      /** Whether a member may still be probed (the order may hold members that died since). */
      probeable: (peerId: string) => boolean
    },
  ) {}

  next(): string | undefined {
    const all = this.opts.candidates()
    const local = all.filter((m) => this.isLocal(m.site)).length
    const first: Group =
      this.opts.random() < localChance(local, all.length - local, this.opts.preference) ? 'local' : 'remote'
    return this.take(first, all) ?? this.take(first === 'local' ? 'remote' : 'local', all)
  }

  /** A newcomer is probed within the current pass of its group (at a random place among the rest). */
  insert(peerId: string, site: string): void {
    const o = this.orders[this.isLocal(site) ? 'local' : 'remote']
    const at = o.index + Math.floor(this.opts.random() * (o.ids.length - o.index + 1))
    o.ids.splice(at, 0, peerId)
  }

  private take(group: Group, all: { peerId: string; site: string }[]): string | undefined {
    const o = this.orders[group]
    for (let tries = 0; tries <= o.ids.length; tries++) {
      if (o.index >= o.ids.length) {
        o.ids = shuffle(
          all.filter((m) => this.isLocal(m.site) === (group === 'local')).map((m) => m.peerId),
          this.opts.random,
        )
        o.index = 0
        if (o.ids.length === 0) return undefined
      }
      const id = o.ids[o.index++] as string
      if (this.opts.probeable(id)) return id
    }
    return undefined
  }

  private isLocal(site: string): boolean {
    return site !== '' && site === this.opts.selfSite
  }
}

/** Up to `k` distinct members, each pick favouring our own site by `preference`. */
export function pickSiteWeighted<T extends { site: string }>(
  list: readonly T[],
  k: number,
  selfSite: string,
  preference: number,
  random: () => number,
): T[] {
  const local = shuffle(
    list.filter((m) => m.site !== '' && m.site === selfSite),
    random,
  )
  const remote = shuffle(
    list.filter((m) => !(m.site !== '' && m.site === selfSite)),
    random,
  )
  const out: T[] = []
  while (out.length < k && local.length + remote.length > 0) {
    const fromLocal = random() < localChance(local.length, remote.length, preference)
    out.push((fromLocal ? local.pop() : remote.pop()) as T)
  }
  return out
}
