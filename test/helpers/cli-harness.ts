// The CLI in-process for unit tests: a node:http server that plays the agent's API, and a run of
// `skymesh ...` whose output is captured.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { type CliIo, type ProgramDeps, runCli } from '../../src/cli/index.js'

export interface CliRun {
  code: number
  out: string
  err: string
}

/** Runs `skymesh argv` in-process; `stderr` adds terminal traits (isTTY, columns) to its stream. */
export async function runCliCaptured(
  argv: string[],
  opts: { env?: CliIo['env']; deps?: ProgramDeps; stderr?: { isTTY?: boolean; columns?: number } } = {},
): Promise<CliRun> {
  let out = ''
  let err = ''
  const io: CliIo = {
    stdout: { write: (s: string) => (out += s) },
    stderr: { write: (s: string) => (err += s), ...opts.stderr },
    env: opts.env ?? {},
  }
  const code = await runCli(argv, io, opts.deps)
  return { code, out, err }
}

export interface FakeApi {
  /** host:port, as `--api` takes it. */
  api: string
  close(): Promise<void>
}

/** Serves `handle` on a free port of 127.0.0.1; a handler that throws answers 500 INTERNAL. */
export async function startFakeApi(
  handle: (req: IncomingMessage, res: ServerResponse) => void | Promise<void>,
): Promise<FakeApi> {
  const server = createServer((req, res) => {
    Promise.resolve()
      .then(() => handle(req, res))
      .catch((e) => sendError(res, 500, 'INTERNAL', String(e)))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    api: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    async close() {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}

/** The request's body as text ('' when it has none). */
export async function readBody(req: IncomingMessage): Promise<string> {
  let raw = ''
  for await (const chunk of req) raw += chunk
  return raw
}

/** Answers `body` as JSON, or an empty response when there is none (204). */
export function sendJson(res: ServerResponse, status: number, body?: unknown): void {
  if (body === undefined) {
    res.writeHead(status).end()
    return
  }
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body))
}

/** Answers the agent API's error shape. */
export function sendError(
  res: ServerResponse,
  status: number,
  code: string,
  message: string,
  details?: unknown,
): void {
  sendJson(res, status, { error: { code, message, details } })
}
