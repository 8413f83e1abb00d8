// Option value parsers for commander: a bad value is a usage error (exit 2) that names the option.
import { InvalidArgumentError } from 'commander'

const UNITS: Record<string, number> = { k: 1 / 1024, m: 1, g: 1024, t: 1024 * 1024 }

/** `256`, `256M`, `256MiB`, `1.5G`, `1GiB` → whole MiB (> 0). */
export function parseMiB(value: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?)?$/i.exec(value.trim())
  const n = m ? Number(m[1]) * (UNITS[(m[2] ?? 'm').toLowerCase()] ?? 1) : Number.NaN
  if (!Number.isInteger(n) || n <= 0) {
    throw new InvalidArgumentError('expected a positive whole number of MiB (e.g. 256, 512M, 1G).')
  }
  return n
}

export function parsePositiveInt(value: string): number {
  const n = Number(value)
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n <= 0) {
    throw new InvalidArgumentError('expected a positive whole number.')
  }
  return n
}

export function parseNonNegative(value: string): number {
  const n = Number(value)
  if (value.trim() === '' || !Number.isFinite(n) || n < 0) {
    throw new InvalidArgumentError('expected a number >= 0.')
  }
  return n
}

/** For repeatable options: `--listen a --listen b` → ['a', 'b']. */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value]
}

export function parseNonNegativeInt(value: string): number {
  const n = Number(value)
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n)) {
    throw new InvalidArgumentError('expected a whole number >= 0.')
  }
  return n
}
