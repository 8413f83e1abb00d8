// What the CLI writes to and reads from; tests pass captured streams and a fake env.

export interface OutStream {
  write(chunk: string): unknown
  isTTY?: boolean
  columns?: number
}

export interface CliIo {
  stdout: OutStream
  stderr: OutStream
  env: Record<string, string | undefined>
}

export function processIo(): CliIo {
  return { stdout: process.stdout, stderr: process.stderr, env: process.env }
}

export function printJson(io: CliIo, value: unknown): void {
  io.stdout.write(`${JSON.stringify(value, null, 2)}\n`)
}
