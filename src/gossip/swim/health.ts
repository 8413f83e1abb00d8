// Lifeguard local health awareness (memberlist awareness.go): a score 0..max that rises when our
// probes fail without the NACKs that would show the network is fine, or when we must refute, and
// falls with each successful probe. Probe interval and timeout are scaled by (score + 1), so a slow
// or overloaded agent probes more gently instead of accusing healthy members.
export class LocalHealth {
  private score = 0
  private readonly max: number

  constructor(max: number) {
    this.max = Math.max(0, Math.floor(max))
  }

  get value(): number {
    return this.score
  }

  apply(delta: number): void {
    this.score = Math.min(this.max, Math.max(0, this.score + delta))
  }

  scale(ms: number): number {
    return ms * (this.score + 1)
  }
}
