// Every bench's command line: `--help` prints its usage and exits, and an option it does not know
// stops it before it starts agents or namespaces (a typo would otherwise run the whole default bench).
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

/** The bench's own header comment (its `// ...` lines up to the first blank or code line). */
function headerOf(moduleUrl: string): string {
  const source = fileURLToPath(moduleUrl)
    .replace(/\/dist\/bench\//, '/bench/')
    .replace(/\.js$/, '.ts')
  let text: string
  try {
    text = readFileSync(source, 'utf8')
  } catch {
    text = readFileSync(fileURLToPath(moduleUrl), 'utf8')
  }
  const lines: string[] = []
  for (const line of text.split('\n')) {
    if (!line.startsWith('//')) break
    lines.push(line.replace(/^\/\/ ?/, ''))
  }
  return lines.join('\n')
}

/**
 * Checks argv against the options the bench takes (names without `--`; `valued` ones take the next
 * word). `--help`/`-h` prints the header and the options, then exits 0; anything else exits 2.
 */
export function checkBenchArgs(
  moduleUrl: string,
  options: { valued?: readonly string[]; flags?: readonly string[] },
  argv: readonly string[] = process.argv.slice(2),
): void {
  const valued = new Set(options.valued ?? [])
  const flags = new Set(options.flags ?? [])
  const usage = () =>
    `${headerOf(moduleUrl)}\n\noptions: ${[...[...valued].map((o) => `--${o} VALUE`), ...[...flags].map((o) => `--${o}`)].join(' ') || '(none)'}`
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    if (a === '--help' || a === '-h') {
      console.log(usage())
      process.exit(0)
    }
    const name = a.startsWith('--') ? a.slice(2) : undefined
    if (name !== undefined && valued.has(name) && argv[i + 1] !== undefined) i++
    else if (name === undefined || !flags.has(name)) {
      console.error(`unknown or incomplete option '${a}' (try --help)`)
      process.exit(2)
    }
  }
}
